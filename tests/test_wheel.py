"""The package as a user installs it: sdist and wheel built, checked, installed and run outside the repository.

One module-scoped build: ``python -m build`` (sdist, then the wheel from the sdist) into a temp folder,
``twine check --strict``, then a fresh virtual environment in another temp folder gets the wheel, and only
the wheel, as its diffexplain. Its other dependencies (torch, diffusers, Jupyter...) are the ones already
installed in this interpreter's environment, seen through a ``.pth`` file added *after* the install, so the
check stays fast and offline. From a temp folder it then loads the default model and runs it, runs
``diffexplain explain`` and ``diffexplain notebooks DIR``, and executes the copied ``00_quickstart.ipynb``
with nbclient in a kernel of that environment. The Python run and the kernel both report where their
diffexplain came from: the wheel's copy in the fresh environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import pytest

# the whole module runs in the notebook layer, so the wheel is built and installed once per CI run
pytestmark = [pytest.mark.slow, pytest.mark.notebook]

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
WEIGHTS = sorted(p.name for p in (REPO / "diffexplain" / "models" / "default").iterdir() if p.is_file())
NOTEBOOK_ENV = {  # as in tests/test_notebooks.py
    "DIFFEXPLAIN_QUICK": "1",
    "PLOTLY_RENDERER": "json",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TQDM_DISABLE": "1",
}

# Run by the fresh environment's Python: executes a notebook with nbclient, a first cell added in memory
# reporting where the kernel's diffexplain and Python come from.
RUN_NOTEBOOK = """
import json, sys
import nbformat
from nbclient import NotebookClient

path, report = sys.argv[1], sys.argv[2]
nb = nbformat.read(path, as_version=4)
nb.cells.insert(0, nbformat.v4.new_code_cell(
    "import sys, diffexplain; print(diffexplain.__file__); print(sys.executable)"))
NotebookClient(nb, kernel_name="python3", timeout=900, resources={"metadata": {"path": "."}}).execute(cwd=".")
errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
where = "".join(o.get("text", "") for o in nb.cells[0].outputs).split()
json.dump({"errors": errors, "where": where, "cells": len(nb.cells)}, open(report, "w"))
"""


@dataclass
class Installed:
    """The built files, the fresh environment and a work folder outside the repository."""

    dist: Path
    venv: Path
    work: Path
    env: dict[str, str]
    seconds: dict[str, float]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        return self.venv / "lib" / version / "site-packages"

    def wheel(self) -> Path:
        (found,) = self.dist.glob("*.whl")
        return found

    def sdist(self) -> Path:
        (found,) = self.dist.glob("*.tar.gz")
        return found

    def run(self, *args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(a) for a in args],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        return done


def _timed(seconds: dict[str, float], label: str, *cmd: str | Path, cwd: Path) -> None:
    started = time.perf_counter()
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=600)
    seconds[label] = time.perf_counter() - started
    assert done.returncode == 0, f"{label} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build sdist and wheel, check them with twine, install the wheel into a fresh venv outside the repo."""
    base = tmp_path_factory.mktemp("wheel")
    assert not base.resolve().is_relative_to(REPO), f"{base} must be outside the repository"
    dist, venv, work = base / "dist", base / "venv", base / "work"
    work.mkdir()
    seconds: dict[str, float] = {}
    # --no-isolation: the build uses this environment's setuptools (offline); the wheel is built from the sdist
    _timed(
        seconds, "build", sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, REPO, cwd=REPO
    )
    _timed(
        seconds, "twine check", sys.executable, "-m", "twine", "check", "--strict", *dist.iterdir(), cwd=base
    )
    _timed(seconds, "venv", sys.executable, "-m", "venv", "--without-pip", venv, cwd=base)
    wheel = next(dist.glob("*.whl"))
    pip = [sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps"]
    _timed(seconds, "install", *pip, wheel, cwd=base)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    }
    env.update(NOTEBOOK_ENV, PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv))
    env.pop("DIFFEXPLAIN_MODEL", None)  # the shipped model, not a classroom override
    result = Installed(dist=dist, venv=venv, work=work, env=env, seconds=seconds)
    # Dependencies from this environment, after diffexplain's own files: the wheel's copy comes first on
    # sys.path, and the editable install's import hook in that folder is never activated (a plain .pth
    # path entry does not process the folder's own .pth files).
    (result.site_packages / "_deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return result


def test_twine_check_and_the_build_pass(installed: Installed) -> None:
    assert sorted(p.suffix for p in installed.dist.iterdir()) == [".gz", ".whl"]
    print({label: f"{s:.1f} s" for label, s in installed.seconds.items()})


def test_wheel_holds_weights_notebooks_licence_and_metadata(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel()) as wheel:
        names = set(wheel.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(wheel.read(meta_name).decode())
    for name in WEIGHTS:
        assert f"diffexplain/models/default/{name}" in names
    for name in NOTEBOOKS:
        assert f"diffexplain/_notebooks/{name}" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert {"diffexplain/fonts/DejaVuSans-subset.ttf", "diffexplain/fonts/LICENSE-DejaVu.txt"} <= names
    assert "diffexplain/web/trace_view.js" in names  # the step view's ES module (page and anywidgets)
    assert meta["Name"] == "diffexplain" and meta["Version"]
    assert meta["License-Expression"] == "Apache-2.0"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(urls)
    assert any(c.startswith("Intended Audience :: Education") for c in meta.get_all("Classifier"))
    assert not any(n.startswith(("tests/", "notebooks/", "benchmarks/")) for n in names)


def test_sdist_holds_what_the_wheel_is_built_from(installed: Installed) -> None:
    with tarfile.open(installed.sdist()) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    required = {"pyproject.toml", "setup.py", "LICENSE", "README.md", "diffexplain/__init__.py"}
    required |= {f"notebooks/{n}" for n in NOTEBOOKS} | {f"diffexplain/models/default/{n}" for n in WEIGHTS}
    assert required <= names, sorted(required - names)


def test_load_default_runs_from_the_wheel_outside_the_repo(installed: Installed) -> None:
    code = (
        "import diffexplain\n"
        "from diffexplain.models.default import load_default\n"
        "trace = load_default(progress=False).run('a red circle on the left', seed=0, num_inference_steps=3)\n"
        "trace.images[0].save('picture.png')\n"
        "print(diffexplain.__file__, len(trace), *trace.images[0].size)"
    )
    where, steps, width, height = installed.run(installed.python, "-c", code).stdout.split()
    assert Path(where).is_relative_to(installed.site_packages), where  # the wheel's copy, not the checkout
    assert not Path(where).resolve().is_relative_to(REPO)
    assert (steps, width, height) == ("3", "64", "64")
    assert (installed.work / "picture.png").stat().st_size > 0


def test_cli_explain_runs_from_the_wheel_outside_the_repo(installed: Installed) -> None:
    cli = installed.venv / "bin" / "diffexplain"
    installed.run(
        cli, "explain", "a blue square at the top", "--out", "out", "--steps", "2", "--device", "cpu"
    )
    written = {p.name for p in (installed.work / "out").iterdir()}
    assert {"image.png", "pred_x0_strip.png", "cfg_comparison.png", "trace.safetensors"} <= written, written


def test_quickstart_notebook_runs_from_the_installed_package(installed: Installed) -> None:
    folder = installed.work / "quickstart"
    done = installed.run(installed.venv / "bin" / "diffexplain", "notebooks", folder)
    assert "written: " + ", ".join(NOTEBOOKS) in done.stdout
    for name in NOTEBOOKS:  # byte for byte the repository's notebooks
        assert (folder / name).read_bytes() == (REPO / "notebooks" / name).read_bytes()
    script, report = installed.work / "run_notebook.py", installed.work / "report.json"
    script.write_text(RUN_NOTEBOOK)
    started = time.perf_counter()
    subprocess.run(
        [installed.python, script, folder / "00_quickstart.ipynb", report],
        cwd=folder,
        env=installed.env,
        check=True,
        timeout=1200,
    )
    print(f"00_quickstart.ipynb from the wheel: {time.perf_counter() - started:.0f} s")
    result = json.loads(report.read_text())
    assert not result["errors"], result["errors"]
    module, executable = result["where"]
    # the kernel's diffexplain is the wheel's
    assert Path(module).is_relative_to(installed.site_packages), module
    assert Path(executable).parent == installed.venv / "bin", executable
