"""Every view over one trace works on a run from a picture (image-to-image and inpainting on the embedded
model): StepExplorer, AttentionMaps, TracePlayer on its saved file, and the one-file HTML page."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffexplain import Trace, load_default
from diffexplain.data import Scene, SceneObject, render_scene
from diffexplain.widgets import AttentionMaps, StepExplorer, TracePlayer

PROMPT = "a blue circle on the left"


@pytest.fixture(scope="module")
def traces() -> dict[str, Trace]:
    explainer = load_default(progress=False)
    picture = render_scene(Scene((SceneObject("red", "circle", "left", "large"),), "light"))
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1.0  # repaint the left half
    return {
        "img2img": explainer.run(PROMPT, image=picture, strength=0.6, num_inference_steps=10, seed=0),
        "inpaint": explainer.run(PROMPT, image=picture, mask_image=mask, num_inference_steps=10, seed=0),
    }


def errors(widget) -> str:
    return "".join(o.get("text", "") for o in widget.output.outputs)


@pytest.mark.parametrize("kind", ["img2img", "inpaint"])
def test_views_of_a_run_from_a_picture(traces, kind, tmp_path: Path):
    trace = traces[kind]
    explorer = StepExplorer(trace)
    before = explorer.images["x0"].value
    explorer.slider.value = len(trace) - 1
    assert errors(explorer) == "" and explorer.images["x0"].value != before
    maps = AttentionMaps(trace)
    assert errors(maps) == "" and trace.steps[0].attention
    trace.save(tmp_path / "run.trace")
    player = TracePlayer(str(tmp_path / "run.trace"))
    assert errors(player) == ""
    page = tmp_path / "page.html"
    trace.to_html(page)
    assert page.stat().st_size > 10_000
