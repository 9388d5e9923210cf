"""Fixtures for the browser tests: one JupyterLab per session, one headless Chromium, a page per test.

``lab_page`` is all a test needs (JupyterLab loads once per session; each test opens its notebook)::

    def test_my_widget(lab_page):
        open_notebook(lab_page, "my_widget.ipynb")
        run_all(lab_page)
        wait_for_widget_image(lab_page, "my-image")

A failing test leaves ``test-artifacts/browser/<test name>.png`` (full page), and its report gets the
screenshot path, the browser console and the tail of the server log.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from pathlib import Path

import pytest
from lab_helpers import close_all_documents, full_page_screenshot
from lab_server import (
    ARTIFACTS_DIR,
    CHROMIUM,
    LOAD_TIMEOUT_S,
    TIMEOUT_S,
    LabServer,
    current_server,
    launch_chromium,
    start_lab,
    stop_lab,
)

BROWSER_DIR = Path(__file__).resolve().parent
# Console lines left out of failure reports: debug chatter and slow-plugin timings on a loaded machine.
_CONSOLE_NOISE = re.compile(r"^\[debug\]|to activate\.$|Registering (pairing|create new text notebook)")
TIMINGS: dict[str, float] = {}  # start-up seconds of "lab_server" and "browser", in the terminal summary


def _missing_browser_reason() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing: run `bash scripts/install-browser.sh` as root (Debian's chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install playwright)"
    return None


def pytest_collection_modifyitems(config, items):
    """Mark every test under tests/browser as browser + slow; skip them all when Chromium is missing."""
    reason = _missing_browser_reason()
    for item in items:
        if BROWSER_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure with a live ``lab_page``: save a full-page screenshot and attach diagnostics."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
    if not rep.failed or rep.when == "teardown":
        return
    page = getattr(item, "_lab_page", None)
    if page is None or page.is_closed():
        return
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.name)
    path = ARTIFACTS_DIR / f"{name}.png"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        full_page_screenshot(page, path)
        rep.sections.append(("browser screenshot", str(path)))
    except Exception as exc:  # the page may be wedged; the report matters more than the picture
        rep.sections.append(("browser screenshot", f"could not save {path}: {exc!r}"))
    console = [line for line in getattr(item, "_lab_console", []) if not _CONSOLE_NOISE.search(line)]
    if console:
        rep.sections.append(("browser console (last 60)", "\n".join(console[-60:])))
    with contextlib.suppress(RuntimeError):
        rep.sections.append(("jupyterlab log (tail)", current_server().log_tail()))


@pytest.fixture(scope="session")
def lab_server():
    """JupyterLab on 127.0.0.1 (free port, token) serving a temp copy of tests/browser/notebooks.

    Isolated HOME and JUPYTER_* dirs, PLOTLY_RENDERER=json, no DISPLAY, kernel = this interpreter.
    Use ``lab_server.add_notebook(path)`` to serve another notebook (e.g. one of the examples).
    """
    reason = _missing_browser_reason()
    if reason:
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="diffexplain-lab-") as tmp:
        t0 = time.monotonic()
        server = start_lab(Path(tmp), timeout=LOAD_TIMEOUT_S)
        TIMINGS["lab_server"] = time.monotonic() - t0
        try:
            yield server
        finally:
            stop_lab(server)


@pytest.fixture(scope="session")
def playwright_session():
    """Playwright's sync API, started once for the whole session.

    A second ``sync_playwright()`` in the same process fails ("using Playwright Sync API inside the
    asyncio loop"), so every browser fixture launches its Chromium from this one.
    """
    reason = _missing_browser_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        yield pw
    finally:
        pw.stop()


@pytest.fixture(scope="session")
def lab_browser(lab_server, playwright_session):
    """A persistent Chromium context (fresh user-data dir) shared by the session's tests."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="diffexplain-chromium-") as user_data:
        context = launch_chromium(playwright_session, user_data)
        for extra in context.pages:  # the persistent context opens with a blank tab
            extra.close()
        TIMINGS["browser"] = time.monotonic() - t0
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="session")
def _lab_tab(lab_browser):
    """The tab the tests share: JupyterLab loads once and each test opens its notebook in it."""
    return {"page": None, "console": []}


def _new_tab(lab_browser, tab: dict):
    page = lab_browser.new_page()
    page.set_default_timeout(TIMEOUT_S * 1000)
    console = tab["console"]
    page.on("console", lambda m: console.append(f"[{m.type}] {m.text}"))
    page.on("pageerror", lambda e: console.append(f"[pageerror] {e}"))
    tab["page"] = page
    return page


@pytest.fixture
def lab_page(request, lab_server: LabServer, lab_browser, _lab_tab):
    """The browser tab for one test (JupyterLab stays loaded between tests, which saves minutes).

    Afterwards every notebook tab is closed unsaved and every kernel shut down; after a failure the tab
    itself is closed, so the next test starts from a fresh page load.
    """
    page = _lab_tab["page"]
    if page is None or page.is_closed():
        page = _new_tab(lab_browser, _lab_tab)
    _lab_tab["console"].clear()
    request.node._lab_page = page
    request.node._lab_console = _lab_tab["console"]
    try:
        yield page
    finally:
        request.node._lab_page = None
        failed = any(
            getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call")
        )
        try:
            if failed or page.is_closed():
                raise RuntimeError("start the next test from a fresh tab")
            close_all_documents(page)
        except Exception:
            _lab_tab["page"] = None
            if not page.is_closed():
                page.close()
            lab_server.shutdown_kernels()


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        parts = ", ".join(f"{k} started in {v:.1f} s" for k, v in TIMINGS.items())
        terminalreporter.write_line(f"browser harness: {parts}")


@pytest.fixture(scope="module")
def browser_page(playwright_session):
    """A fresh headless Chromium with no JupyterLab (for pages opened from a file): (page, the URLs it
    requested, its page errors and console errors)."""
    with tempfile.TemporaryDirectory(prefix="diffexplain-page-") as profile:
        context = launch_chromium(playwright_session, profile, width=1000, height=900)
        page = context.new_page()
        requests: list[str] = []
        errors: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        page.on(
            "console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None
        )
        try:
            yield page, requests, errors
        finally:
            context.close()
