"""Widgets beyond JupyterLab 4: the plot modes (plotly in an Output, or PNGs drawn in the kernel) and
ipywidgets 7.7 (the classic Notebook 6.5 environment that ``scripts/frontends.sh`` builds)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path

import ipywidgets as W
import pytest
from PIL import Image

from diffexplain import Explainer
from diffexplain.widgets import GuidanceLab, StepExplorer, plot_mode, set_plot_mode
from diffexplain.widgets.figures import PLOTLY_MIME, PLOTS_ENV, LiveFigure
from diffexplain.widgets.plot_image import SCALE, WIDTH, figure_image

REPO = Path(__file__).resolve().parents[1]
FRONTENDS_DIR = Path(
    os.environ.get("DIFFEXPLAIN_FRONTENDS_DIR", Path(tempfile.gettempdir()) / "diffexplain-frontends")
)
CLASSIC_PYTHON = FRONTENDS_DIR / "classic" / "bin" / "python"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _mode_reset(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts in auto mode (no variable, no set_plot_mode) and leaves it so."""
    monkeypatch.delenv(PLOTS_ENV, raising=False)
    set_plot_mode(None)
    yield
    monkeypatch.delenv(PLOTS_ENV, raising=False)
    set_plot_mode(None)


def _line_figure(ys: list[float]) -> LiveFigure:
    fig = LiveFigure(mode="image")
    fig.add_scatter(x=list(range(len(ys))), y=ys, name="a", mode="lines+markers")
    fig.add_scatter(x=[0, 1], y=[0.5, 0.5], name="b", mode="lines", line={"dash": "dot"})
    fig.update_layout(height=260, title={"text": "a title"}, xaxis_title="step", yaxis_title="RMS")
    fig.redraw()
    return fig


def test_image_mode_shows_png_whose_content_follows_the_data() -> None:
    fig = _line_figure([1.0, 2.0, 3.0, 2.0])
    assert fig.plot_mode == "image" and isinstance(fig.output, W.Image)
    first = fig.output.value
    assert first[:8] == PNG_SIGNATURE
    with Image.open(io.BytesIO(first)) as img:
        assert img.width == WIDTH * SCALE
        pixels = img.convert("RGB")
        assert len(set(pixels.getdata())) > 3  # lines, text and grid drawn, not a blank canvas
    with fig.batch_update():
        fig.data[0].y = [3.0, 1.0, 0.5, 2.5]
    assert fig.output.value[:8] == PNG_SIGNATURE and fig.output.value != first
    with fig.batch_update():
        fig.data[0].y = [1.0, 2.0, 3.0, 2.0]
    assert fig.output.value == first  # the same data draws the same picture


def test_image_mode_draws_the_trace_where_its_values_are() -> None:
    """A horizontal line high up vs low down: the drawn colour moves with the value (the renderer maps data)."""

    def rows_with_colour(y: float) -> list[int]:
        fig = LiveFigure(mode="image")
        fig.add_scatter(x=[0, 1, 2], y=[y, y, y], mode="lines", line={"color": "#ff0000"})
        fig.update_yaxes(range=[0, 1])
        img = figure_image(fig).convert("RGB")
        return [
            r
            for r in range(img.height)
            if any(img.getpixel((c, r)) == (255, 0, 0) for c in range(0, img.width, 7))
        ]

    high, low = rows_with_colour(0.9), rows_with_colour(0.1)
    assert high and low and max(high) < min(low)


def test_plotly_mode_sends_plotly_mimetype() -> None:
    fig = LiveFigure(mode="plotly")
    fig.add_scatter(x=[0, 1], y=[1, 2])
    fig.redraw()
    assert isinstance(fig.output, W.Output)
    (bundle,) = fig.output.outputs
    assert bundle["data"][PLOTLY_MIME]["data"][0]["y"] == [1, 2]


def test_plot_mode_switch_env_and_colab(monkeypatch: pytest.MonkeyPatch) -> None:
    expected_auto = "plotly" if int(W.__version__.split(".")[0]) >= 8 else "image"
    assert plot_mode() == expected_auto
    assert set_plot_mode("image") == "image" and isinstance(LiveFigure().output, W.Image)
    assert set_plot_mode("PLOTLY") == "plotly" and isinstance(LiveFigure().output, W.Output)
    set_plot_mode(None)
    monkeypatch.setenv(PLOTS_ENV, "image")
    assert plot_mode() == "image"
    monkeypatch.setenv(PLOTS_ENV, "auto")
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))  # a Colab kernel
    assert plot_mode() == "image"
    with pytest.raises(ValueError, match=r"mode='svg'.*'plotly'"):
        set_plot_mode("svg")
    monkeypatch.setenv(PLOTS_ENV, "matplotlib")
    with pytest.raises(ValueError, match=r"DIFFEXPLAIN_PLOTS='matplotlib'"):
        plot_mode()
    with pytest.raises(ValueError, match="mode='x'"):
        LiveFigure(mode="x")


def test_widgets_in_image_mode(parts: dict) -> None:
    set_plot_mode("image")
    ex = Explainer(**parts, progress=False)
    trace = ex.run("a red circle", num_inference_steps=3, seed=0, guidance_scale=5.0)
    explorer = StepExplorer(trace)
    assert isinstance(explorer.fig.output, W.Image)
    timeline = explorer.fig.output.value
    explorer.slider.value = 2  # the current-step marker moves
    assert explorer.fig.output.value[:8] == PNG_SIGNATURE and explorer.fig.output.value != timeline
    lab = GuidanceLab(ex, "a red circle", seed=0, guidance_scale=5.0, num_inference_steps=3)
    plot = lab.fig.output.value
    lab.scale.value = 9.0  # ‖w·Δ‖ follows the slider
    assert lab.fig.output.value != plot
    for widget in (explorer, lab):
        assert widget.output.outputs == () and "Error" not in widget.status.value


SMOKE = """
import warnings
import torch
torch.set_num_threads(1)
import ipywidgets
from diffexplain.models.default import load_default
from diffexplain.widgets import (AttentionMaps, ForwardProcess, GuidanceLab, NoiseLab, PromptSwap,
                                 StepExplorer, TracePlayer, plot_mode)
ex = load_default(progress=False)
PROMPT = "a red circle on the left and a blue square on the right"
trace = ex.run(PROMPT, num_inference_steps=12, seed=0)
explorer = StepExplorer(trace)
before = explorer.images["xt"].value, explorer.fig.output.value
explorer.slider.value = 5
assert explorer.images["xt"].value != before[0] and explorer.fig.output.value != before[1]
lab = GuidanceLab(ex, PROMPT, seed=0, num_inference_steps=12)
strip = lab.strip.value
lab.scale.value = 3.0
assert lab.strip.value != strip
widgets = [explorer, lab, NoiseLab(ex, PROMPT, seed=0, num_inference_steps=12),
           PromptSwap(ex, PROMPT, "a green triangle", num_inference_steps=12, sweep_points=2),
           ForwardProcess(ex, t=300), AttentionMaps(trace, token="blue").link(explorer)]
explorer.slider.value = 7  # linked in the kernel (W.link), so in every front end
assert widgets[-1].step.value == 7
trace.save(TRACE_PATH)
widgets.append(TracePlayer(TRACE_PATH))
# an upload as the anywidget TracePlayer's page sends it (a message with the file as a binary buffer,
# the same under ipywidgets 7 and 8)
player, content = TracePlayer(), open(TRACE_PATH, "rb").read()
player._on_message(player, {"action": "upload", "name": "run.trace"}, [memoryview(content)])
assert player.trace is not None and len(player.trace) == len(trace)
widgets.append(player)
for w in widgets:
    assert w.output.outputs == () and "Error" not in w.status.value, (type(w).__name__, w.output.outputs, w.status.value)
print(f"ipywidgets {ipywidgets.__version__}, plots {plot_mode()}, {len(widgets)} widgets ok")
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_widget_builds_under_ipywidgets_7(tmp_path: Path) -> None:
    """In the classic environment (ipywidgets 7.7, scripts/frontends.sh): every widget imports and builds
    on the default model's trace, its sliders change pictures, and nothing is warned or printed to stderr."""
    if not CLASSIC_PYTHON.exists():
        pytest.skip(f"no ipywidgets 7 environment at {CLASSIC_PYTHON}: run scripts/frontends.sh")
    script = SMOKE.replace("TRACE_PATH", repr(str(tmp_path / "smoke.trace")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop(PLOTS_ENV, None)
    done = subprocess.run(
        [str(CLASSIC_PYTHON), "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=540,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().startswith("ipywidgets 7.7.") and "plots image, 8 widgets ok" in done.stdout
    assert done.stderr.strip() == "", done.stderr[-3000:]
