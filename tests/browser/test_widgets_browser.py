"""Each widget in a real JupyterLab: it renders, a slider or button changes the picture, no error output.

Notebooks are written per test (the default model when it is installed, else tiny random parts) and
served with ``lab_server.add_notebook``. Screenshots: ``docs_screenshot`` (docs/assets/screenshots/
with DIFFEXPLAIN_UPDATE_SCREENSHOTS=1, else test-artifacts/).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lab_helpers import (
    ARTIFACTS_DIR,
    click_button,
    count_error_outputs,
    docs_screenshot,
    error_outputs,
    open_notebook,
    press_slider,
    run_all,
    serve_cells,
    slider_readout,
    wait_for_plotly,
    wait_for_text,
    wait_for_widget_image,
    widget_screenshot,
)

SETUP = """\
import os, warnings
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
from diffexplain import Explainer
from diffexplain.widgets import AttentionMaps, ForwardProcess, GuidanceLab, NoiseLab, PromptSwap, StepExplorer, TracePlayer
try:
    from diffexplain.models.default import load_default
    ex = load_default(progress=False)
    STEPS = 12
except FileNotFoundError:  # the default model is not installed: tiny random parts (noise pictures)
    from tests.tiny_parts import tiny_parts
    ex = Explainer(**tiny_parts(), progress=False)
    STEPS = 4
PROMPT = "a red circle on the left and a blue square on the right"
"""

WIDGETS = {
    "step_explorer": """\
trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=0, guidance_scale=5.0)
widget = StepExplorer(trace)
widget""",
    "step_explorer_z_image": """\
from tests.tiny_zimage import tiny_zimage_pipeline  # a 2026 family: an LLM reads the prompt, the model gives −v
z_image = Explainer.from_pipeline(tiny_zimage_pipeline(), progress=False)
trace = z_image.run(PROMPT, num_inference_steps=4, seed=0, guidance_scale=3.0, max_sequence_length=48)
widget = StepExplorer(trace)
widget""",
    "guidance_lab": """\
from diffexplain.widgets import ClassicGuidanceLab  # the ipywidgets lab (the anywidget: test_guidance_lab_browser)
widget = ClassicGuidanceLab(ex, PROMPT, seed=0, guidance_scale=5.0, num_inference_steps=STEPS)
widget""",
    "guidance_methods": """\
widget = GuidanceLab(ex, PROMPT, seed=0, guidance_scale=5.0, num_inference_steps=8, seeds=4)
widget""",
    "noise_lab": """\
widget = NoiseLab(ex, PROMPT, seed=0, guidance_scale=5.0, num_inference_steps=STEPS)
widget.use_rect.value = True
widget.strength.value = 2.0
widget""",
    "prompt_swap": """\
widget = PromptSwap(ex, PROMPT, "a green triangle on the top", num_inference_steps=STEPS, sweep_points=4)
widget""",
    "forward_process": """\
widget = ForwardProcess(ex, t=300)
widget""",
    "picture_lab": """\
from diffexplain.widgets import PictureLab
widget = PictureLab(
    ex, "a blue circle on the left", picture_caption="a red circle on the left", strength=0.8, num_inference_steps=STEPS
)
widget.use_mask.value = True  # repaint the left half (the circle), keep the right
widget.box["x0"].value, widget.box["x1"].value = 0, 32
widget""",
    "toy_paths": """\
from diffexplain.widgets import ToyPaths
widget = ToyPaths(num_steps=6)
widget""",
    "two_dialects": """\
from diffexplain.widgets import TwoDialects
widget = TwoDialects(ex, seed=3, num_inference_steps=STEPS)  # the shipped flow model beside ex
widget""",
    "attention_maps": """\
import ipywidgets as W
trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=0, guidance_scale=5.0)
explorer = StepExplorer(trace)
widget = AttentionMaps(trace, token="blue").link(explorer)  # linked through the kernel
W.VBox([widget, explorer])""",
    "trace_player": """\
path = "run.trace"  # next to the served copy of this notebook (a temp folder)
ex.run(PROMPT, num_inference_steps=STEPS, seed=1, guidance_scale=5.0).save(path)
del ex  # no model from here on
widget = TracePlayer(path)
widget""",
}


def _serve(lab_server, tmp_path: Path, name: str) -> str:
    return serve_cells(lab_server, tmp_path, f"widget_{name}", SETUP, WIDGETS[name])


def _open(page, lab_server, tmp_path: Path, name: str) -> None:
    open_notebook(page, _serve(lab_server, tmp_path, name))
    state = run_all(page, timeout=300)
    assert state["done"] == state["total"] == 2 and state["errors"] == 0, (state, error_outputs(page))


def _timeline_cursor(page, css_class: str, changed_from: str | None = None) -> str:
    """The x of the step line on the anywidget views' SVG timeline (once drawn, or once moved)."""
    return page.wait_for_function(
        """([sel, old]) => {
          const line = document.querySelector(`.${sel} .dx-cursor`);
          const x = line && line.getAttribute('x1');
          return x && x !== old ? x : null;
        }""",
        arg=[css_class, changed_from],
        polling=250,
        timeout=120_000,
    ).json_value()


def _series_path(page, css_class: str, changed_from: str | None = None) -> str:
    """The first series line of an anywidget view's SVG plot (once drawn, or once changed)."""
    return page.wait_for_function(
        """([sel, old]) => {
          const path = document.querySelector(`.${sel} path.dx-series`);
          const d = path && path.getAttribute('d');
          return d && d !== old ? d : null;
        }""",
        arg=[css_class, changed_from],
        polling=250,
        timeout=120_000,
    ).json_value()


def _no_errors(page) -> None:
    assert count_error_outputs(page) == 0, error_outputs(page)


@pytest.mark.timeout(600)
def test_step_explorer_in_lab(lab_page, lab_server, tmp_path):
    page = lab_page
    _open(page, lab_server, tmp_path, "step_explorer")
    src = wait_for_widget_image(page, "dx-xt-image")
    cursor = _timeline_cursor(page, "dx-step-explorer")  # the anywidget view's SVG timeline
    press_slider(page, "dx-step-slider", "ArrowRight", times=2)
    wait_for_widget_image(page, "dx-xt-image", changed_from=src)
    _timeline_cursor(page, "dx-step-explorer", changed_from=cursor)
    wait_for_text(page, "dx-step-info", f"step {slider_readout(page, 'dx-step-slider')} of")
    _no_errors(page)
    docs_screenshot(page, "step_explorer", "dx-step-explorer")


@pytest.mark.timeout(600)
def test_step_explorer_on_a_2026_family_in_lab(lab_page, lab_server, tmp_path):
    """A Z-Image trace (tiny parts) in the anywidget StepExplorer: the header names the family and the LLM
    that read the prompt, the panels say velocity, and the arrow keys scrub it."""
    page = lab_page
    _open(page, lab_server, tmp_path, "step_explorer_z_image")
    src = wait_for_widget_image(page, "dx-xt-image")
    wait_for_text(page, "dx-header", "Z-Image · text read by Qwen3 (an LLM)")
    titles = " ".join(page.locator(".dx-step-explorer .dx-panel-title").all_inner_texts())
    assert "velocity" in titles and "noise" not in titles, titles
    press_slider(page, "dx-step-slider", "ArrowRight", times=2)
    wait_for_widget_image(page, "dx-xt-image", changed_from=src)
    wait_for_text(page, "dx-step-info", "step 2 of")
    _no_errors(page)


@pytest.mark.timeout(600)
def test_guidance_lab_in_lab(lab_page, lab_server, tmp_path):
    page = lab_page
    _open(page, lab_server, tmp_path, "guidance_lab")
    wait_for_widget_image(page, "dx-on-image")
    src = wait_for_widget_image(page, "dx-reguide-strip")
    fig = wait_for_plotly(page, "dx-guidance-plot")
    press_slider(page, "dx-guidance-slider", "ArrowRight", times=4)
    wait_for_widget_image(page, "dx-reguide-strip", changed_from=src)
    wait_for_plotly(page, "dx-guidance-plot", changed_from=fig)
    w = float(slider_readout(page, "dx-guidance-slider"))
    wait_for_text(page, "dx-reguide-label", f"re-guided at w = {w:g} ")
    ranged = wait_for_widget_image(page, "dx-range-image")
    click_button(page, "dx-cfg-off-button")
    wait_for_widget_image(page, "dx-range-image", changed_from=ranged)
    wait_for_text(page, "dx-status", "guidance off for steps")
    # the seed grid: 12 seeds at w = 0, w = 1 and the chosen w, each picture checked, each column counted
    sweep = wait_for_plotly(page, "dx-sweep-plot", min_traces=2)
    click_button(page, "dx-grid-run")
    wait_for_text(page, "dx-status", "steps · ")  # the grid's summary: "“…”, seeds 0–11, 12 steps · …"
    checked = "no verdicts" not in page.locator(".dx-grid-note").inner_text()  # tiny parts: no checker
    assert page.locator("img.dx-grid-image").count() == 36
    counts = [text.strip() for text in page.locator(".dx-grid-count").all_inner_texts()]
    assert [c.endswith("of 12 right" if checked else "12 pictures") for c in counts] == [True] * 3, counts
    if checked:  # the green borders are the counted ones, column by column
        for column, text in zip(page.locator(".dx-grid-column").all(), counts, strict=True):
            right = column.locator("img.dx-grid-image.dx-right").count()
            wrong = column.locator("img.dx-grid-image.dx-wrong").count()
            assert (right, right + wrong) == (int(text.split()[0]), 12), (text, right, wrong)
            border = column.locator("img.dx-grid-image").first.evaluate(
                "e => getComputedStyle(e).borderTopColor"
            )
            assert border in ("rgb(26, 152, 80)", "rgb(215, 48, 39)"), border  # green or red
    click_button(page, "dx-sweep-run")
    wait_for_plotly(page, "dx-sweep-plot", changed_from=sweep, min_traces=2)
    wait_for_text(page, "dx-sweep-table", "w = 10")
    _no_errors(page)
    widget_screenshot(
        page, ARTIFACTS_DIR / "classic_guidance_lab.png", "dx-guidance-lab"
    )  # docs: the anywidget's


@pytest.mark.timeout(600)
def test_guidance_lab_method_chooser_in_lab(lab_page, lab_server, tmp_path):
    """The method menu re-runs the guided side with another guidance method; Compare methods counts the
    same seeds under every method into a table."""
    page = lab_page
    _open(page, lab_server, tmp_path, "guidance_methods")
    on = wait_for_widget_image(page, "dx-on-image")
    effective = _series_path(page, "dx-effective-plot")  # the anywidget lab draws its plots as SVG
    page.locator(".dx-guidance-method select").select_option(label="APG (β = −0.5)")
    wait_for_widget_image(page, "dx-on-image", changed_from=on)
    wait_for_text(page, "dx-status", "ran at w = 5")
    assert "guidance on (w = 5, APG" in page.locator(".dx-guidance-lab").inner_text()
    _series_path(page, "dx-effective-plot", changed_from=effective)
    click_button(page, "dx-compare-methods")
    table = wait_for_text(page, "dx-methods-table", "one guidance method per row")
    for label in ("CFG (ε_u + w·Δ)", "APG (β = −0.5)", "CFG-Zero*", "at gamut edge"):
        assert label in table, table
    rows = page.locator(".dx-methods-table tr").count() - 1
    assert page.locator(".dx-methods-table img.dx-method-image").count() == rows * 4  # 4 seeds per method
    _no_errors(page)
    widget_screenshot(page, ARTIFACTS_DIR / "guidance_methods.png", "dx-methods-table")


@pytest.mark.timeout(600)
def test_noise_lab_in_lab(lab_page, lab_server, tmp_path):
    page = lab_page
    _open(page, lab_server, tmp_path, "noise_lab")
    wait_for_widget_image(page, "dx-original-image")
    src = wait_for_widget_image(page, "dx-branch-image")
    click_button(page, "dx-inject-button")
    wait_for_widget_image(page, "dx-branch-image", changed_from=src)
    wait_for_widget_image(page, "dx-diff-image")
    wait_for_text(page, "dx-status", "ran again")
    _no_errors(page)
    docs_screenshot(page, "noise_lab", "dx-noise-lab")


@pytest.mark.timeout(600)
def test_prompt_swap_in_lab(lab_page, lab_server, tmp_path):
    page = lab_page
    _open(page, lab_server, tmp_path, "prompt_swap")
    src = wait_for_widget_image(page, "dx-swap-image")
    click_button(page, "dx-swap-button")
    wait_for_widget_image(page, "dx-swap-image", changed_from=src)
    click_button(page, "dx-sweep-button")
    wait_for_widget_image(page, "dx-sweep-strip")
    page.wait_for_function(  # the anywidget's SVG sweep plot: both curves drawn
        "() => document.querySelectorAll('.dx-sweep-plot path.dx-series').length === 2", timeout=120_000
    )
    wait_for_text(page, "dx-status", "sweep done")
    _no_errors(page)
    docs_screenshot(page, "prompt_swap", "dx-prompt-swap")


@pytest.mark.timeout(600)
def test_forward_process_in_lab(lab_page, lab_server, tmp_path):
    page = lab_page
    _open(page, lab_server, tmp_path, "forward_process")
    src = wait_for_widget_image(page, "dx-forward-image")
    guess = wait_for_widget_image(page, "dx-model-x0-image")
    marker = page.eval_on_selector(".dx-abar-plot .dx-chart-marker", "m => m.getAttribute('cx')")
    press_slider(page, "dx-t-slider", "PageUp")
    wait_for_widget_image(page, "dx-forward-image", changed_from=src)
    wait_for_widget_image(page, "dx-model-x0-image", changed_from=guess)
    assert page.eval_on_selector(".dx-abar-plot .dx-chart-marker", "m => m.getAttribute('cx')") != marker
    _no_errors(page)
    docs_screenshot(page, "forward_process", "dx-forward-process")


@pytest.mark.timeout(600)
def test_picture_lab_in_lab(lab_page, lab_server, tmp_path):
    """PictureLab as an anywidget: the picture with the mask rectangle Python set, the schedule plot; the
    strength slider moves the entry point and the x̂0 slider the picture with no comm message to the
    kernel; Run and Invert are messages to Python and come back with pictures and the error plot."""
    from scrub_probe import counts, install

    page = lab_page
    lab = ".dx-picture-lab"
    _open(page, lab_server, tmp_path, "picture_lab")
    wait_for_widget_image(page, "dx-input-image")
    page.wait_for_function(f"() => !document.querySelector('{lab} .dx-mask-rect').hidden", timeout=60_000)
    assert page.locator(f"{lab} .dx-schedule-plot path.dx-series").count() == 2  # skipped, runs
    entry = wait_for_text(page, "dx-entry", "enters at step")
    install(page, f"{lab} img.dx-input-image")
    press_slider(page, "dx-strength", "ArrowRight", times=2)  # 0.8 → 0.9: the loop enters earlier
    page.wait_for_function(
        "([sel, old]) => document.querySelector(sel).innerText !== old", arg=[f"{lab} .dx-entry", entry]
    )
    assert counts(page)["comm"] == 0, counts(page)  # drawn in the browser (Python hears it once it settles)
    click_button(page, "dx-run")
    result = wait_for_widget_image(page, "dx-result-image")
    wait_for_widget_image(page, "dx-start-image")
    x0 = wait_for_widget_image(page, "dx-x0-image")
    wait_for_text(page, "dx-status", "inpainting: entered at step 2")  # the strength the browser set
    install(page, f"{lab} img.dx-x0-image")
    press_slider(page, "dx-picture-step", "Home")
    wait_for_widget_image(page, "dx-x0-image", changed_from=x0)
    wait_for_text(page, "dx-picture-lab", "x̂0 at step 2 of")
    assert counts(page)["comm"] == 0, counts(page)  # scrubbing x̂0 needed no kernel
    rebuilt_plot = page.locator(f"{lab} .dx-inversion-plot path.dx-series")
    assert rebuilt_plot.count() == 0
    click_button(page, "dx-invert")
    wait_for_text(page, "dx-status", "final error")
    wait_for_widget_image(page, "dx-reconstruction-image")
    assert rebuilt_plot.count() == 1  # the error per step, drawn by the module
    assert page.locator(f"{lab} img.dx-result-image").get_attribute("src") != result  # all pictures resent
    _no_errors(page)
    docs_screenshot(page, "picture_lab", "dx-picture-lab")


@pytest.mark.timeout(600)
def test_trace_player_in_lab(lab_page, lab_server, tmp_path):
    page = lab_page
    _open(page, lab_server, tmp_path, "trace_player")
    src = wait_for_widget_image(page, "dx-xt-image")
    cursor = _timeline_cursor(page, "dx-step-explorer")
    press_slider(page, "dx-step-slider", "ArrowRight")
    wait_for_widget_image(page, "dx-xt-image", changed_from=src)
    _timeline_cursor(page, "dx-step-explorer", changed_from=cursor)
    wait_for_text(page, "dx-step-info", f"step {slider_readout(page, 'dx-step-slider')} of")
    _no_errors(page)
    docs_screenshot(page, "trace_player", "dx-trace-player")


@pytest.mark.timeout(600)
def test_attention_maps_in_lab(lab_page, lab_server, tmp_path):
    """The anywidget AttentionMaps: its own step slider redraws the overlay and the bars in the browser; the
    linked StepExplorer follows through the kernel; the fork comes back from Python. Choosing with no comm
    message: tests/browser/test_attention_browser.py."""
    page = lab_page
    _open(page, lab_server, tmp_path, "attention_maps")
    overlay = wait_for_widget_image(page, "dx-overlay-image")
    wait_for_widget_image(page, "dx-map-image")
    bars = _svg(page, "dx-token-shares")
    press_slider(page, "dx-attention-step", "ArrowRight", times=2)  # from step 0: the explorer's
    overlay = wait_for_widget_image(page, "dx-overlay-image", changed_from=overlay)
    _svg(page, "dx-token-shares", changed_from=bars)
    step = slider_readout(page, "dx-attention-step")
    wait_for_text(page, "dx-attention-info", f"step {step} ")
    wait_for_text(page, "dx-step-explorer .dx-step-info", f"step {step} of")  # linked through the kernel
    click_button(page, "dx-reweight-button")
    wait_for_widget_image(page, "dx-after-image")
    wait_for_text(page, "dx-status", "forked at step")
    _no_errors(page)
    docs_screenshot(page, "attention_maps", "dx-attention-maps")


def _svg(page, css_class: str, changed_from: str | None = None) -> str:
    """The markup of the SVG an anywidget view draws inside ``css_class`` (once drawn, or once changed)."""
    return page.wait_for_function(
        """([sel, old]) => {
          const svg = document.querySelector(`.${sel} svg`);
          const html = svg && svg.innerHTML;
          return html && html !== old ? html : null;
        }""",
        arg=[css_class, changed_from],
        polling=100,
        timeout=120_000,
    ).json_value()


@pytest.mark.timeout(600)
def test_toy_paths_in_lab(lab_page, lab_server, tmp_path):
    """Both dialects' paths drawn; the step slider redraws both plots in the browser with no comm message
    (Python hears the step once it settles); more guidance samples again in Python."""
    page = lab_page
    _open(page, lab_server, tmp_path, "toy_paths")
    flow = _svg(page, "dx-toy-flow")
    epsilon = _svg(page, "dx-toy-epsilon")
    summary = wait_for_text(page, "dx-toy-summary", "straightness")
    page.wait_for_timeout(500)
    sent = _count_comm(page)
    press_slider(page, "dx-toy-step", "ArrowLeft", times=3)
    _svg(page, "dx-toy-flow", changed_from=flow)
    _svg(page, "dx-toy-epsilon", changed_from=epsilon)
    assert page.inner_text(".dx-toy-caption") == "step 3 of 6"
    assert _count_comm(page) == sent  # drawn in the browser: nothing sent to the kernel yet
    wait_for_text(page, "dx-status", "step 3 of 6")  # Python heard the settled step
    press_slider(page, "dx-toy-guidance", "ArrowRight", times=4)
    page.locator(".dx-toy-guidance input").dispatch_event("change")
    page.wait_for_function(
        "old => document.querySelector('.dx-toy-summary').innerText !== old", arg=summary, timeout=60_000
    )
    _no_errors(page)
    docs_screenshot(page, "toy_paths", "dx-toy-paths")


def _count_comm(page) -> int:
    """How many comm messages the page has sent the kernel since the first call (counting starts then)."""
    return page.evaluate(
        """() => {
          const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
          if (!kernel.__dxComm) {
            const send = kernel.sendShellMessage.bind(kernel);
            kernel.__dxComm = { n: 0 };
            kernel.sendShellMessage = (msg, ...rest) => {
              if (msg.header.msg_type === 'comm_msg') kernel.__dxComm.n += 1;
              return send(msg, ...rest);
            };
          }
          return kernel.__dxComm.n;
        }"""
    )


@pytest.mark.timeout(600)
def test_two_dialects_in_lab(lab_page, lab_server, tmp_path):
    """Both models' rows and the settle plot drawn in the browser (an anywidget); the step slider moves
    both rows' pictures, labels and the plot's marks with no comm message to the kernel; "Run both" is a
    message to Python and comes back with new pictures."""
    from scrub_probe import counts, install

    page = lab_page
    _open(page, lab_server, tmp_path, "two_dialects")
    wait_for_text(page, "dx-status", "ran both")
    eps = wait_for_widget_image(page, "dx-epsilon-pred-x0")
    flow = wait_for_widget_image(page, "dx-flow-pred-x0")
    wait_for_widget_image(page, "dx-epsilon-strip")
    wait_for_text(page, "dx-flow-label", "x̂0 = x_t − σ·v̂")
    plot = ".dx-two-dialects .dx-dialect-plot"
    assert page.locator(f"{plot} path.dx-series").count() == 2  # the settle curves, drawn by the module
    mark = page.locator(f"{plot} circle.dx-mark").first.get_attribute("cx")
    install(page, ".dx-two-dialects img.dx-epsilon-pred-x0")
    press_slider(page, "dx-dialect-step", "ArrowRight", times=4)
    wait_for_widget_image(page, "dx-epsilon-pred-x0", changed_from=eps)
    wait_for_widget_image(page, "dx-flow-pred-x0", changed_from=flow)
    wait_for_text(page, "dx-epsilon-label", "step 4:")
    assert page.locator(f"{plot} circle.dx-mark").first.get_attribute("cx") != mark
    assert counts(page)["comm"] == 0, counts(page)  # scrubbing needed no kernel
    _no_errors(page)
    docs_screenshot(page, "two_dialects", "dx-two-dialects")
    shown = page.locator(".dx-two-dialects img.dx-flow-final").get_attribute("src")
    page.locator(".dx-two-dialects .dx-seed input").fill("7")
    click_button(page, "dx-run")  # a model action: a message to Python, new pictures back
    wait_for_text(page, "dx-status", "ran both")
    wait_for_widget_image(page, "dx-flow-final", changed_from=shown)
    assert page.locator(".dx-two-dialects .dx-seed input").input_value() == "7"  # the run's own seed
    _no_errors(page)
