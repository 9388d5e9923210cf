"""A real JupyterLab for the browser tests: an isolated server on a free port, and its settings.

``conftest.py`` starts one per test session (:func:`start_lab`) and stops it at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = Path(__file__).resolve().parent / "notebooks"
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts" / "browser"
DOCS_SCREENSHOTS_DIR = REPO_ROOT / "docs" / "assets" / "screenshots"
CHROMIUM = os.environ.get("DIFFEXPLAIN_CHROMIUM", "/usr/bin/chromium")
# Flags checked on these machines (see /work/shared/design/BROWSER_TESTS.md); Playwright adds --headless.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# Default explicit wait for anything that depends on the kernel or plotly. Generous: on a 2-core machine
# at load average ~18, Run All of a trivial notebook took 210-270 s and the first page load 5-7 min
# (30 s and 10 s when idle). DIFFEXPLAIN_BROWSER_TIMEOUT (seconds) overrides it.
TIMEOUT_S = float(os.environ.get("DIFFEXPLAIN_BROWSER_TIMEOUT", "300"))
LOAD_TIMEOUT_S = 2 * TIMEOUT_S  # the first load of the JupyterLab page (all of its JavaScript)
KERNEL_IDLE_TEXT = "(ipykernel) | Idle"

# A lighter JupyterLab (page load is the slowest step on a busy 2-core machine): server extensions and
# frontend plugins that widget tests never use are switched off in the isolated config dir.
SERVER_EXTENSIONS_OFF = ["jupyter_lsp", "jupyterlab_jupytext", "jupyter_server_terminals"]
LAB_EXTENSIONS_OFF = [
    "jupyterlab-jupytext",
    "@jupyterlab/debugger-extension",
    "@jupyterlab/extensionmanager-extension",
    "@jupyterlab/terminal-extension",
]

# User settings for the isolated JupyterLab: no autosave (the served copy stays as committed), every cell
# in the DOM (no windowing, so widgets below the fold render), no news / update toasts over the page.
LAB_USER_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


# --------------------------------------------------------------------------------------------- server


@dataclass
class LabServer:
    """A running JupyterLab: ``url`` (no trailing slash), ``token``, ``root_dir`` (the served temp copy)."""

    url: str
    token: str
    root_dir: Path
    log_path: Path
    proc: subprocess.Popen
    env: dict[str, str] = field(repr=False)

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """Call the REST API (``path`` like ``/api/sessions``); returns the decoded JSON, or None."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"token {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def add_notebook(self, src: str | os.PathLike, name: str | None = None) -> str:
        """Copy a notebook (or any file) into the served folder; returns its name for ``open_notebook``."""
        src = Path(src)
        dest = self.root_dir / (name or src.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        return dest.relative_to(self.root_dir).as_posix()

    def shutdown_kernels(self) -> None:
        """Shut down every session and kernel (between tests, so kernels do not pile up)."""
        try:
            for s in self.api("GET", "/api/sessions") or []:
                self.api("DELETE", f"/api/sessions/{s['id']}")
            for k in self.api("GET", "/api/kernels") or []:
                self.api("DELETE", f"/api/kernels/{k['id']}")
        except (OSError, urllib.error.URLError):
            pass

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.shutdown_kernels()
            self.proc.terminate()  # SIGTERM: jupyter_server shuts its kernels down and exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        # The server runs in its own process group (start_new_session): clean up anything left in it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


_CURRENT: LabServer | None = None  # set by the session fixture; the page helpers read url/token from it


def launch_chromium(playwright: Any, user_data: str | Path, *, width: int = 1400, height: int = 1000) -> Any:
    """A persistent headless Chromium context (Debian's chromium, fresh user-data dir) from ``playwright``."""
    context = playwright.chromium.launch_persistent_context(
        str(user_data),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": width, "height": height},
        device_scale_factor=1,
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    context.set_default_timeout(TIMEOUT_S * 1000)
    return context


def current_server() -> LabServer:
    if _CURRENT is None:
        raise RuntimeError("no JupyterLab is running: use the lab_server or lab_page fixture")
    return _CURRENT


def _die_with_parent() -> None:
    """In the server's child process: get SIGTERM when pytest dies, even by SIGKILL (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_env(base: Path) -> dict[str, str]:
    """Environment for the server and its kernels: every Jupyter/IPython dir under ``base``."""
    env = dict(os.environ)
    home = Path(env.get("HOME", str(Path.home())))
    dirs = {
        "HOME": "home",
        "JUPYTER_CONFIG_DIR": "jupyter_config",
        "JUPYTER_DATA_DIR": "jupyter_data",
        "JUPYTER_RUNTIME_DIR": "jupyter_runtime",
        "IPYTHONDIR": "ipython",
        "JUPYTERLAB_WORKSPACES_DIR": "lab_workspaces",
        "JUPYTERLAB_SETTINGS_DIR": "lab_settings",
    }
    for var, sub in dirs.items():
        (base / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(base / sub)
    # Keep the real caches reachable (models, tokenizers) although HOME moved.
    env.setdefault("HF_HOME", str(home / ".cache" / "huggingface"))
    env.setdefault("TORCH_HOME", str(home / ".cache" / "torch"))
    env.update(
        PLOTLY_RENDERER="json",
        JUPYTER_PLATFORM_DIRS="1",
        PYTHONUNBUFFERED="1",
        MPLBACKEND="Agg",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p),
    )
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    env.pop("JUPYTER_PATH", None)  # nothing may shadow the kernelspec written below
    return env


def write_kernelspec(data_dir: Path) -> Path:
    """Kernelspec ``python3`` running this very interpreter (the project's venv), so diffexplain imports."""
    spec_dir = data_dir / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "metadata": {"debugger": True},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return spec_dir


def start_lab(base: Path, notebooks: Path = NOTEBOOKS_DIR, timeout: float = TIMEOUT_S) -> LabServer:
    """Start JupyterLab on loopback serving a temp copy of ``notebooks``; returns once /api/status answers."""
    global _CURRENT
    root = base / "notebooks"
    shutil.copytree(notebooks, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    env = isolated_env(base)
    write_kernelspec(Path(env["JUPYTER_DATA_DIR"]))
    for rel, settings in LAB_USER_SETTINGS.items():
        path = Path(env["JUPYTERLAB_SETTINGS_DIR"]) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    config_dir = Path(env["JUPYTER_CONFIG_DIR"])
    server_config = {"ServerApp": {"jpserver_extensions": dict.fromkeys(SERVER_EXTENSIONS_OFF, False)}}
    (config_dir / "jupyter_server_config.json").write_text(json.dumps(server_config))
    (config_dir / "labconfig").mkdir(exist_ok=True)
    page_config = {"disabledExtensions": dict.fromkeys(LAB_EXTENSIONS_OFF, True)}
    (config_dir / "labconfig" / "page_config.json").write_text(json.dumps(page_config))
    token = os.urandom(16).hex()
    last_error = ""
    for _attempt in range(3):  # the free port may be taken between choosing and binding it
        port = _free_port()
        log_path = base / f"jupyterlab-{port}.log"
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
            "--LabApp.expose_app_in_browser=True",
            "--MappingKernelManager.default_kernel_name=python3",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        server = LabServer(f"http://127.0.0.1:{port}", token, root, log_path, proc, env)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"JupyterLab exited with {proc.returncode}")
                try:
                    server.api("GET", "/api/status", timeout=5)
                    _CURRENT = server
                    return server
                except (OSError, urllib.error.URLError):
                    time.sleep(0.25)
            raise RuntimeError(f"JupyterLab did not answer /api/status within {timeout:.0f} s")
        except BaseException as exc:
            server.stop()
            last_error = f"{exc}\n--- server log ---\n{server.log_tail()}"
            if isinstance(exc, KeyboardInterrupt) or "already in use" not in last_error:
                raise RuntimeError(last_error) from exc
    raise RuntimeError(last_error)


def stop_lab(server: LabServer) -> None:
    global _CURRENT
    server.stop()
    if _CURRENT is server:
        _CURRENT = None
