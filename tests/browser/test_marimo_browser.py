"""The marimo quickstart (``notebooks/quickstart_marimo.py``) in headless Chromium, two ways:

- ``marimo export html``: the static page. Its frontend loads from jsDelivr's CDN, unreachable here; the same
  files ship in the marimo wheel (``marimo/_static``), so the test routes the CDN's URLs to them (any
  other request off this machine is refused and counted). The StepExplorer anywidget's pictures are in
  the page (its ``_frames`` buffer), so it draws every panel and scrubs with the keyboard with no kernel.
- ``marimo run --headless``: the live app. Moving the w slider re-runs the re-guide cell (a new re-guided
  x̂0), scrubbing the StepExplorer reaches Python and re-runs it at the new step, and a new prompt makes a
  new trace and StepExplorer.

marimo renders an anywidget inside a shadow root: Playwright's CSS locators pierce it, ``document``
queries do not, so these tests use locators.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_server import ARTIFACTS_DIR, REPO_ROOT, TIMEOUT_S, _die_with_parent, _free_port, launch_chromium

marimo = pytest.importorskip("marimo")

NOTEBOOK = REPO_ROOT / "notebooks" / "quickstart_marimo.py"
STATIC = Path(marimo.__file__).resolve().parent / "_static"
CDN = "https://cdn.jsdelivr.net/npm/@marimo-team/frontend@"
PANELS = ["xt", "x0", "channels", "eps-cond", "eps-uncond", "delta", "eps-guided"]  # dx-<name>-image
SHOTS = ARTIFACTS_DIR / "marimo"


def _env(home: Path) -> dict[str, str]:
    """This checkout's diffexplain first (marimo runs the notebook with its own folder on sys.path)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HOME=str(home), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1")
    return env


@pytest.fixture(scope="module")
def exported() -> Iterator[Path]:
    """The notebook exported by ``marimo export html`` (it runs every cell once)."""
    with tempfile.TemporaryDirectory(prefix="diffexplain-marimo-") as tmp:
        out = Path(tmp) / "quickstart_marimo.html"
        notebook = shutil.copy2(NOTEBOOK, tmp)  # marimo writes its session cache beside the notebook
        done = subprocess.run(
            [sys.executable, "-m", "marimo", "export", "html", str(notebook), "-o", str(out)],
            capture_output=True,
            text=True,
            env=_env(Path(tmp)),
            timeout=TIMEOUT_S,
            cwd=tmp,
        )
        assert done.returncode == 0 and out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
        yield out


@pytest.fixture(scope="module")
def chromium(playwright_session):
    with tempfile.TemporaryDirectory(prefix="diffexplain-chromium-") as user_data:
        context = launch_chromium(playwright_session, user_data, width=1300, height=1000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(request, chromium):
    """A fresh tab: marimo's CDN served from marimo/_static, every other outside request refused; its
    requests refused, files missing and page errors in ``page.problems``."""
    tab = chromium.new_page()
    problems: list[str] = []
    console: list[str] = []

    def cdn(route) -> None:
        path = STATIC / route.request.url.split("/dist/", 1)[1].split("?")[0]
        if path.is_file():
            route.fulfill(path=str(path))
        else:
            problems.append(f"not in marimo/_static: {route.request.url}")
            route.abort()

    def outside(route) -> None:
        problems.append(f"refused: {route.request.url}")
        route.abort()

    tab.route(f"{CDN}*/dist/**", cdn)
    local = ("http://127.0.0.1:", "ws://127.0.0.1:", CDN)  # the live app's own server; the CDN, routed above
    tab.route(lambda url: url.startswith(("http://", "https://")) and not url.startswith(local), outside)
    tab.on("console", lambda m: console.append(f"[{m.type}] {m.text}"))
    tab.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    tab.problems = problems
    request.node._lab_page, request.node._lab_console = tab, console
    try:
        yield tab
    finally:
        request.node._lab_page = None
        tab.close()


def _loaded(page, css: str, timeout: float = TIMEOUT_S):
    """The (first) picture with class ``css``, once it is decoded."""
    img = page.locator(f"img.{css}").first
    img.wait_for(state="attached", timeout=timeout * 1000)
    img.evaluate(
        "(e) => new Promise((ok) => { const done = () => e.complete && e.naturalWidth > 0;"
        " if (done()) ok(); else { const t = setInterval(() => { if (done()) { clearInterval(t); ok(); } }, 100); } })",
        timeout=timeout * 1000,
    )
    return img


def _wait_attr(locator, name: str, value: str, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while locator.get_attribute(name) != value:
        assert time.monotonic() < deadline, (
            f"{name} stayed {locator.get_attribute(name)!r}, expected {value!r}"
        )
        time.sleep(0.1)


def _wait_src_change(locator, old: str, timeout: float = TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout
    while (src := locator.get_attribute("src")) == old:
        assert time.monotonic() < deadline, "the picture did not change"
        time.sleep(0.1)
    return src


def _check_explorer_scrubs(page) -> None:
    """Every panel drawn; the arrow keys on the focused view move the step, its pictures and the readout."""
    for name in PANELS:
        _loaded(page, f"dx-{name}-image")
    view = page.locator(".dx-view[tabindex]").first  # the mounted view: it takes the keys
    xt = page.locator("img.dx-xt-image").first
    first = xt.get_attribute("src")
    assert xt.get_attribute("data-step") == "0" and first.startswith("blob:")  # from the _frames buffer
    view.focus()
    for _ in range(3):
        view.press("ArrowRight")
    _wait_attr(xt, "data-step", "3")
    assert page.locator(".dx-step-readout").first.inner_text().strip() == "3"
    assert page.locator("input.dx-step").first.input_value() == "3"
    assert xt.get_attribute("src") != first
    _loaded(page, "dx-xt-image")
    assert "step 3" in page.locator(".dx-info").first.inner_text()
    view.press("End")
    _wait_attr(xt, "data-step", str(int(page.locator("input.dx-step").first.get_attribute("max"))))


def _screenshot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    view = page.locator(".dx-view").first
    view.scroll_into_view_if_needed()
    view.screenshot(path=str(SHOTS / f"{name}.png"))


@pytest.mark.timeout(900)
def test_exported_page_draws_and_scrubs_the_step_explorer(page, exported):
    page.goto(exported.as_uri(), timeout=TIMEOUT_S * 1000)
    _check_explorer_scrubs(page)
    _loaded(page, "dx-reguided-x0")  # the re-guide cell's output, as exported
    assert page.locator(".dx-reguide").get_attribute("data-w") == "7.5"
    page.wait_for_timeout(1000)  # the step's sync to (no) Python has fired: nothing broke
    _screenshot(page, "exported")
    assert page.problems == []


@pytest.mark.timeout(900)
def test_exported_page_styles_reach_the_shadow_root(page, exported):
    page.goto(exported.as_uri(), timeout=TIMEOUT_S * 1000)
    _loaded(page, "dx-xt-image")
    row = page.locator(".dx-view .dx-row").first
    assert row.evaluate("(e) => getComputedStyle(e).display") == "flex"


@contextlib.contextmanager
def marimo_run(home: Path) -> Iterator[str]:
    """``marimo run --headless`` on a free loopback port; yields its URL once it answers."""
    port = _free_port()
    notebook = shutil.copy2(NOTEBOOK, home)  # marimo writes its session cache beside the notebook
    cmd = [sys.executable, "-m", "marimo", "run", str(notebook), "--headless", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--no-token", "--no-sandbox", "--no-check"]
    log_path = home / "marimo.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            env=_env(home),
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            assert proc.poll() is None, f"marimo run exited:\n{log_path.read_text(errors='replace')[-3000:]}"
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < deadline, (
                    f"marimo run did not answer:\n{log_path.read_text()[-3000:]}"
                )
                time.sleep(0.25)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.timeout(900)
def test_live_app_reguides_from_the_w_slider_and_the_explorer_step(page, tmp_path):
    with marimo_run(tmp_path) as url:
        page.goto(url, timeout=TIMEOUT_S * 1000)
        reguide = page.locator(".dx-reguide")
        _loaded(page, "dx-reguided-x0")
        _check_explorer_scrubs(page)  # ends on the last step: the re-guide cell follows it
        last = page.locator("input.dx-step").first.get_attribute("max")
        _wait_attr(reguide, "data-step", last)
        view = page.locator(".dx-view[tabindex]").first
        view.focus()
        view.press("Home")
        _wait_attr(reguide, "data-step", "0")
        before = page.locator("img.dx-reguided-x0").get_attribute("src")
        slider = page.locator("[role=slider]").first  # marimo's w slider (0.5 per key press)
        slider.focus()
        for _ in range(4):
            slider.press("ArrowLeft")
        _wait_attr(reguide, "data-w", "5.5")
        after = _wait_src_change(page.locator("img.dx-reguided-x0"), before)
        assert after.startswith("data:image/png;base64,")
        assert page.locator("img.dx-run-x0").get_attribute("src") != after  # re-guided ≠ the run's x̂0
        prompt = page.locator("input[type=text]").first  # the prompt box: a new trace, a new StepExplorer
        prompt.fill("a blue square on the right")
        prompt.press("Enter")
        header = page.locator(".dx-view .dx-header").first
        deadline = time.monotonic() + TIMEOUT_S
        while "a blue square on the right" not in header.inner_text():
            assert time.monotonic() < deadline, f"the StepExplorer still shows {header.inner_text()!r}"
            time.sleep(0.25)
        _loaded(page, "dx-xt-image")
        _screenshot(page, "live")
        assert page.problems == []
