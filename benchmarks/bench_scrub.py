"""Scrubbing a trace in JupyterLab: the anywidget StepExplorer against the ipywidgets one (a script, not a test).

In headless Chromium and a real JupyterLab (the browser tests' server, ``tests/browser/lab_server.py``),
on the default model's trace (25 steps, w = 7.5 by default), for each view:

- **key → picture**: the median delay from an arrow key press on the step slider to the new picture
  decoded and drawn (timed in the page, from the key event's time stamp; ``tests/browser/scrub_probe.py``);
- **10 rapid presses**: whether the picture lands on step 10, and when;
- **busy kernel**: the same while the kernel runs a pure-Python loop (a background computation: it
  answers nothing meanwhile); a press whose picture does not come within ``--busy-seconds`` + 5 s is "none";
- **bytes per trace**: what the kernel sends to show every step once (the anywidget: its one buffer of
  pictures and the view data; the ipywidgets view: the pictures and timeline of each step it draws);
- **first picture**: from running the view's cell to its first picture drawn.

Goal: the anywidget's median ≤ 20 ms, with the kernel free or busy.

    python benchmarks/bench_scrub.py [--steps 25] [--presses 15] [--busy-seconds 8] [--json out.json]

``--quick`` (what CI runs, to catch a crash; its figures mean nothing): 4 steps, 3 presses, a 3 s busy
loop. Without Chromium or playwright (``bash scripts/install-browser.sh``), only the bytes per trace
are measured (in Python) and the browser part says why it was skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROWSER = ROOT / "tests" / "browser"
PROMPT = "a red circle on the left and a blue square on the right"
VIEWS = {"anywidget": "StepExplorer", "ipywidgets": "ClassicStepExplorer"}
QUICK = {"steps": 4, "presses": 3, "busy_seconds": 3.0}
SETUP = """\
import os, warnings
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
from diffexplain.models.default import load_default
from diffexplain.widgets import ClassicStepExplorer, StepExplorer
ex = load_default(progress=False)
trace = ex.run({prompt!r}, num_inference_steps={steps}, seed=0)
"""


def bytes_per_trace(steps: int) -> dict[str, int]:
    """What the kernel sends to show every step of the trace once, per view (measured in Python)."""
    import torch

    torch.set_num_threads(1)
    from diffexplain.models.default import load_default
    from diffexplain.widgets import ClassicStepExplorer, StepExplorer
    from diffexplain.widgets.figures import PLOTLY_MIME

    trace = load_default(progress=False).run(PROMPT, num_inference_steps=steps, seed=0)
    new = StepExplorer(trace)
    sent_new = len(new._frames) + len(json.dumps(new._view)) + len(json.dumps(new._index))
    old = ClassicStepExplorer(trace)
    sent_old = 0
    for k in range(len(trace)):
        old.slider.value = k
        sent_old += sum(len(image.value) for image in old.images.values())
        outputs = old.fig.output.outputs if hasattr(old.fig.output, "outputs") else ()
        sent_old += sum(len(json.dumps(o.get("data", {}).get(PLOTLY_MIME, {}))) for o in outputs)
        sent_old += len(old.info.value) + len(old.unet_row.value)
    return {"anywidget": sent_new, "ipywidgets": sent_old}


def _notebook(view: str, steps: int, folder: Path) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(SETUP.format(prompt=PROMPT, steps=steps)),
        nbformat.v4.new_code_cell(f"widget = {VIEWS[view]}(trace)\nwidget"),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    path = folder / f"scrub_{view}.ipynb"
    nbformat.write(nb, path)
    return path


RUN_CELL_JS = """
(index) => {
  const nb = window.jupyterapp.shell.currentWidget.content;
  nb.activeCellIndex = index;
  window.__dxRunAt = performance.now();
  window.jupyterapp.commands.execute('notebook:run-cell');
}
"""
FIRST_PICTURE_JS = """
() => {
  const img = document.querySelector('.dx-step-explorer img.dx-xt-image');
  return img && img.complete && img.naturalWidth > 0 ? performance.now() - window.__dxRunAt : null;
}
"""
STEP_JS = """
() => { const i = document.querySelector('.dx-step-explorer .dx-step-info');
        return i ? (i.innerText.match(/step (\\d+) of/) || [])[1] || null : null; }
"""


def _set_step(page, k: int) -> None:
    """Put the view on step ``k`` from Python and wait until the page shows it (after the view's own
    step, sent once scrubbing settles, has reached Python: else Python may think it is already at ``k``)."""
    page.wait_for_timeout(800)
    page.evaluate(
        "(k) => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
        ".requestExecute({code: `widget.slider.value = ${k}`, silent: true}).done",
        k,
    )
    page.wait_for_function(f"() => ({STEP_JS})() === '{k}'", polling=50, timeout=60_000)


def measure_view(page, server, view: str, args: argparse.Namespace, folder: Path) -> dict:
    from lab_helpers import open_notebook, wait_for_kernel_idle
    from scrub_probe import counts, install, make_kernel_busy, median_ms, press_and_time, rapid

    name = server.add_notebook(_notebook(view, args.steps, folder))
    open_notebook(page, name)
    page.evaluate(RUN_CELL_JS, 0)
    wait_for_kernel_idle(page, timeout=600)
    page.evaluate(RUN_CELL_JS, 1)
    first = page.wait_for_function(FIRST_PICTURE_JS, polling=10, timeout=300_000).json_value()
    wait_for_kernel_idle(page, timeout=300)
    slider = ".dx-step-explorer input[type=range]" if view == "anywidget" else ".dx-step-slider .noUi-handle"
    install(page, ".dx-step-explorer img.dx-xt-image")
    out: dict = {"first_picture_ms": round(first, 1)}

    _set_step(page, 0)
    delays = press_and_time(page, slider, args.presses, timeout=30)
    out["key_to_picture_ms"] = median_ms(delays)
    out["key_to_picture_all_ms"] = [None if d is None else round(d, 1) for d in delays]

    _set_step(page, 0)
    t0 = time.monotonic()
    rapid(page, slider, 10)
    landed = None
    try:
        page.wait_for_function(f"() => ({STEP_JS})() === '10'", polling=10, timeout=30_000)
        page.wait_for_timeout(300 if view == "anywidget" else 1500)  # settled: nothing further moves it
        landed = page.evaluate(STEP_JS)
    except Exception:
        landed = page.evaluate(STEP_JS)
    out["rapid_10_lands_on"] = landed
    out["rapid_10_s"] = round(time.monotonic() - t0, 2)

    wait_for_kernel_idle(page, timeout=120)
    _set_step(page, 0)
    wait_for_kernel_idle(page, timeout=120)
    before = counts(page)
    make_kernel_busy(page, args.busy_seconds)
    busy = press_and_time(
        page,
        slider,
        min(args.presses, 3 if view == "ipywidgets" else args.presses),
        timeout=args.busy_seconds + 5,
    )
    out["busy_key_to_picture_ms"] = median_ms(busy)
    out["busy_all_ms"] = [None if d is None else round(d, 1) for d in busy]
    out["comm_messages_while_scrubbing_busy"] = counts(page)["comm"] - before["comm"]
    wait_for_kernel_idle(page, timeout=120)
    return out


def browser_part(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(BROWSER))
    from lab_server import CHROMIUM, launch_chromium, start_lab, stop_lab

    if not os.access(CHROMIUM, os.X_OK):
        return {"skipped": f"{CHROMIUM} is missing (bash scripts/install-browser.sh)"}
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"skipped": "the playwright package is not installed"}
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-scrub-") as tmp:
        server = start_lab(Path(tmp))
        try:
            with sync_playwright() as pw:
                context = launch_chromium(pw, Path(tmp) / "chromium")
                page = context.pages[0] if context.pages else context.new_page()
                for view in args.views:
                    results[view] = measure_view(page, server, view, args, Path(tmp))
                context.close()
        finally:
            stop_lab(server)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--presses", type=int, default=15)
    parser.add_argument("--busy-seconds", type=float, default=8.0)
    parser.add_argument("--views", nargs="+", default=list(VIEWS), choices=list(VIEWS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="tiny settings, to catch a crash (CI)")
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    figures: dict = {
        "settings": {k: v for k, v in vars(args).items() if k != "json" and not isinstance(v, Path)}
    }
    figures["bytes_per_trace"] = bytes_per_trace(args.steps)
    figures["browser"] = browser_part(args)
    sent = figures["bytes_per_trace"]
    print(
        f"bytes per trace ({args.steps} steps): anywidget {sent['anywidget']:,}, ipywidgets {sent['ipywidgets']:,}"
    )
    for view, row in figures["browser"].items():
        if view == "skipped":
            print(f"browser: skipped ({row})")
            continue
        print(
            f"{view:10s} key → picture median {row['key_to_picture_ms']} ms (goal ≤ 20 ms); busy kernel "
            f"{row['busy_key_to_picture_ms']} ms; 10 rapid presses land on step {row['rapid_10_lands_on']}; "
            f"first picture {row['first_picture_ms']} ms; comm messages while scrubbing a busy kernel "
            f"{row['comm_messages_while_scrubbing_busy']}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
