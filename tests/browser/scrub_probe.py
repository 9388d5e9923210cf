"""Measure scrubbing in a real page: key press → new picture, and the comm messages a kernel is sent.

Shared by ``test_scrub_browser.py`` and ``benchmarks/bench_scrub.py``. A picture counts as shown when
the watched ``img`` has its new ``src`` decoded and one animation frame has passed; the delay is taken
from the key event's own time stamp (``performance.now()``'s clock), in the page, so Playwright's own
latency does not count.
"""

from __future__ import annotations

import statistics
import time

INSTALL_JS = """
(sel) => {
  const img = document.querySelector(sel);
  if (!img) return false;
  window.__dx = { keys: [], pics: [], comm: 0, shell: 0 };
  document.addEventListener('keydown', (ev) => window.__dx.keys.push(ev.timeStamp), true);
  new MutationObserver(async () => {
    const src = img.src;
    try { await img.decode(); } catch (e) { return; }
    if (img.src !== src) return;  // replaced meanwhile: the later one counts
    requestAnimationFrame(() => window.__dx.pics.push({ t: performance.now(), src, step: img.dataset.step || null }));
  }).observe(img, { attributes: true, attributeFilter: ['src'] });
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  if (!kernel.__dxCounted) {  // every message the page sends the kernel on its shell channel
    const send = kernel.sendShellMessage.bind(kernel);
    kernel.sendShellMessage = (msg, ...rest) => {
      const d = window.__dx;
      if (d) { d.shell += 1; if (msg.header.msg_type === 'comm_msg') d.comm += 1; }
      return send(msg, ...rest);
    };
    kernel.__dxCounted = true;
  }
  return true;
}
"""

BUSY_JS = """
(seconds) => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  // a background computation that holds the kernel: pure Python, so no thread can answer for it
  const future = kernel.requestExecute({
    code: `import time\\n_t = time.time()\\nwhile time.time() - _t < ${seconds}:\\n    sum(range(10000))`,
    silent: true, store_history: false });
  window.__dxBusyDone = null;  // when the kernel said the loop is over
  future.done.then(() => { window.__dxBusyDone = performance.now(); }, () => { window.__dxBusyDone = -1; });
  return true;
}
"""


def install(page, img_selector: str) -> None:
    """Start recording key presses, picture changes of ``img_selector`` and messages to the kernel."""
    if not page.evaluate(INSTALL_JS, img_selector):
        raise AssertionError(f"no picture matches {img_selector!r}")


def counts(page) -> dict:
    """``{"keys", "pics", "comm", "shell"}``: key presses, pictures shown, comm messages, shell messages."""
    return page.evaluate(
        "() => ({keys: __dx.keys.length, pics: __dx.pics.length, comm: __dx.comm, shell: __dx.shell})"
    )


def kernel_still_busy(page) -> bool:
    """Whether the loop of ``make_kernel_busy`` has not ended yet (its reply has not come)."""
    return page.evaluate("() => window.__dxBusyDone === null")


def make_kernel_busy(page, seconds: float) -> None:
    """Run a pure-Python loop of ``seconds`` in the kernel (it answers nothing meanwhile), and wait
    until the page sees the kernel busy."""
    page.evaluate(BUSY_JS, seconds)
    page.wait_for_function(
        "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'busy'",
        polling=50,
        timeout=30_000,
    )


def press_and_time(
    page, focus_selector: str, presses: int, *, key: str = "ArrowRight", timeout: float = 30.0
) -> list[float | None]:
    """Press ``key`` ``presses`` times, one at a time, each once the picture of the last one is shown
    (or ``timeout`` passed); returns each delay in ms (None: no new picture in time)."""
    page.locator(focus_selector).first.focus()
    delays: list[float | None] = []
    for _ in range(presses):
        before = counts(page)["pics"]
        page.keyboard.press(key)
        end = time.monotonic() + timeout
        while counts(page)["pics"] <= before and time.monotonic() < end:
            page.wait_for_timeout(2)
        if counts(page)["pics"] <= before:
            delays.append(None)
            continue
        delays.append(
            page.evaluate("(i) => __dx.pics[__dx.pics.length - 1].t - __dx.keys[__dx.keys.length - 1]", 0)
        )
    return delays


def rapid(page, focus_selector: str, presses: int, *, key: str = "ArrowRight") -> float:
    """Press ``key`` ``presses`` times as fast as the page takes them; returns the ms from the first
    press to the last picture shown so far (call ``wait`` helpers after it to see where it lands)."""
    page.locator(focus_selector).first.focus()
    for _ in range(presses):
        page.keyboard.press(key)
    return page.evaluate(
        "() => (__dx.pics.length ? __dx.pics[__dx.pics.length - 1].t : NaN) - __dx.keys[__dx.keys.length - 1]"
    )


def median_ms(delays: list[float | None]) -> float | None:
    """The median of the delays that ended with a picture (None if none did)."""
    done = [d for d in delays if d is not None]
    return statistics.median(done) if done else None
