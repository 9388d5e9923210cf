"""Trace previews: decoded x_t and x̂0 per step stored by ``trace.save``, shown by TracePlayer without a model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from diffexplain import Explainer, Trace, TraceFileError
from diffexplain.previews import KINDS, make_previews
from diffexplain.probe import decode_latents
from diffexplain.render import to_pil
from tests.conftest import PROMPT

V1_FILE = Path(__file__).parent / "data" / "trace_v1.safetensors"


@pytest.fixture(scope="module")
def run(parts, tmp_path_factory):
    ex = Explainer(**parts, progress=False).set_scheduler("ddim")
    trace = ex.run(PROMPT, num_inference_steps=4, seed=3, guidance_scale=4.0)
    folder = tmp_path_factory.mktemp("previews")
    with_previews, without = folder / "with.safetensors", folder / "without.safetensors"
    trace.save(with_previews)
    trace.save(without, previews=False)
    return ex, trace, with_previews, without


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_save_stores_decoded_pictures_of_every_step(run):
    ex, trace, with_previews, without = run
    loaded = Trace.load(with_previews)
    assert loaded.previews is not None and loaded.previews.source == "vae"
    assert len(loaded.previews) == len(trace) == 4
    height, width = trace.image.shape[-2:]
    assert loaded.previews.size == (height, width)  # the image size (under the 256 px cap)
    for step in range(len(trace)):
        x0 = to_pil(decode_latents(ex, trace["step.pred_x0", step]))
        xt = to_pil(decode_latents(ex, trace["step.latents", step]))
        assert np.array_equal(_pixels(loaded.previews.png("pred_x0", step)), np.asarray(x0))
        assert np.array_equal(_pixels(loaded.previews.png("latents", step)), np.asarray(xt))
    assert not np.array_equal(
        _pixels(loaded.previews.png("latents", 0)), _pixels(loaded.previews.png("latents", 3))
    )
    assert Trace.load(without).previews is None
    assert with_previews.stat().st_size > without.stat().st_size
    # the tensors themselves are unchanged by storing previews
    plain = Trace.load(without)
    assert torch.equal(loaded["step.pred_x0", 2], plain["step.pred_x0", 2])


def test_previews_are_made_once_and_kept_by_a_loaded_trace(run, tmp_path):
    _, trace, with_previews, _ = run
    made = trace.previews
    trace.save(tmp_path / "again.safetensors")
    assert trace.previews is made  # not decoded a second time
    loaded = Trace.load(with_previews)  # no model: the saved pictures travel on
    loaded.save(tmp_path / "copy.safetensors")
    copy = Trace.load(tmp_path / "copy.safetensors")
    for kind in KINDS:
        assert [copy.previews.png(kind, i) for i in range(4)] == [made.png(kind, i) for i in range(4)]


def test_a_trace_without_previews_and_without_its_model(run, tmp_path):
    _, _, _, without = run
    loaded = Trace.load(without)
    loaded.save(tmp_path / "still_without.safetensors")  # default: stored when they can be made
    assert Trace.load(tmp_path / "still_without.safetensors").previews is None
    with pytest.raises(ValueError, match="previews need the model's VAE"):
        loaded.save(tmp_path / "x.safetensors", previews=True)
    with pytest.raises(ValueError, match="previews='yes'"):
        loaded.save(tmp_path / "x.safetensors", previews="yes")
    assert not (tmp_path / "x.safetensors").exists()


def test_a_loaded_trace_given_its_explainer_gets_previews(run, tmp_path):
    ex, trace, _, without = run
    loaded = Trace.load(without, explainer=ex)
    loaded.save(tmp_path / "now_with.safetensors")
    again = Trace.load(tmp_path / "now_with.safetensors")
    assert again.previews.png("pred_x0", 1) == trace.previews.png("pred_x0", 1)


def test_pixel_space_models_store_their_own_pictures(pixel_parts, tmp_path):
    ex = Explainer(**pixel_parts, progress=False).set_scheduler("ddim")
    trace = ex.run(PROMPT, num_inference_steps=3, seed=0, guidance_scale=3.0)
    trace.save(tmp_path / "pixels.safetensors")
    loaded = Trace.load(tmp_path / "pixels.safetensors")
    assert loaded.previews.source == "pixels"
    expected = to_pil(trace["step.pred_x0", 2].float().clamp(-1, 1))
    assert np.array_equal(_pixels(loaded.previews.png("pred_x0", 2)), np.asarray(expected))


def test_large_images_are_capped(run):
    ex, trace, _, _ = run
    small = make_previews(trace, ex, max_size=8)
    assert max(small.size) == 8
    assert _pixels(small.png("latents", 0)).shape[:2] == small.size
    with pytest.raises(ValueError, match="max_size=4"):
        make_previews(trace, ex, max_size=4)


def test_old_files_still_load():
    old = Trace.load(V1_FILE)  # version 1, written before previews existed
    assert old.previews is None and len(old) > 0


def _rewrite(path: Path, out: Path, edit) -> Path:
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
        doc = json.loads(f.metadata()["diffexplain"])
    edit(doc, tensors)
    save_file(tensors, str(out), metadata={"diffexplain": json.dumps(doc)})
    return out


def test_version_3_file_without_previews_loads(run, tmp_path):
    _, _, with_previews, _ = run

    def strip(doc, tensors):
        assert doc["version"] == 3
        for ref in doc.pop("previews")["latents"]:
            tensors.pop(ref)

    loaded = Trace.load(_rewrite(with_previews, tmp_path / "v3.safetensors", strip))
    assert loaded.previews is None and len(loaded) == 4


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda doc, t: doc["previews"]["latents"].pop(), "one picture .or null. per step"),
        (lambda doc, t: doc["previews"].update(size=[9, 9]), "previews.size says 9×9"),
        (lambda doc, t: doc["previews"].update(source="url"), "is not 'vae' or 'pixels'"),
        (lambda doc, t: doc["previews"].update(script="x"), "unknown keys"),
        (
            lambda doc, t: t.update({doc["previews"]["pred_x0"][0]: torch.arange(40, dtype=torch.uint8)}),
            "not a PNG",
        ),
        (lambda doc, t: t.update({doc["previews"]["pred_x0"][1]: torch.zeros(3, 3)}), "1-D uint8"),
        (lambda doc, t: doc["previews"]["pred_x0"].__setitem__(0, "nope"), "does not hold"),
    ],
)
def test_broken_previews_are_refused(run, tmp_path, edit, message):
    _, _, with_previews, _ = run
    bad = _rewrite(with_previews, tmp_path / "bad.safetensors", edit)
    with pytest.raises(TraceFileError, match=message):
        Trace.load(bad)


def test_trace_player_shows_the_saved_pictures_without_a_model(run):
    from diffexplain.widgets import TracePlayer

    _, trace, with_previews, without = run
    player = TracePlayer(with_previews, size=64)
    explorer = player.explorer
    assert not explorer.preview.value and not explorer.preview.disabled
    explorer.slider.value = 2
    saved = Image.open(io.BytesIO(trace.previews.png("pred_x0", 2))).convert("RGB")
    expected = np.asarray(saved.resize((64, 64), Image.Resampling.NEAREST))
    assert np.array_equal(_pixels(explorer.images["x0"].value), expected)
    explorer.preview.value = True  # the box still gives the linear latent preview
    assert not np.array_equal(_pixels(explorer.images["x0"].value), expected)
    assert player.output.outputs == ()

    plain = TracePlayer(without, size=64)  # no previews in the file: the latent preview, box locked
    assert plain.explorer.preview.value and plain.explorer.preview.disabled
    assert plain.output.outputs == ()


def test_previews_too_slow_to_make_are_left_out_with_a_warning(parts, tmp_path, monkeypatch):
    from diffexplain import previews

    ex = Explainer(**parts, progress=False).set_scheduler("ddim")
    trace = ex.run(PROMPT, num_inference_steps=2, seed=1)
    with pytest.raises(previews.PreviewsTooSlow, match=r"decoding 4 previews would take about .* min"):
        make_previews(trace, ex, budget_s=0)
    # a save nobody asked pictures of stays quick: over the time limit, none are made, and it says so
    monkeypatch.setattr(previews, "DEFAULT_BUDGET_S", 0.0)
    with pytest.warns(UserWarning, match="previews left out: decoding 4 previews"):
        trace.save(tmp_path / "quick.safetensors")
    assert Trace.load(tmp_path / "quick.safetensors").previews is None
    assert trace._previews_too_slow  # remembered: a second save does not time them again
    trace.save(tmp_path / "asked.safetensors", previews=True)  # asked for: made whatever it costs
    assert len(Trace.load(tmp_path / "asked.safetensors").previews) == 2


def test_a_stopped_run_saves_and_loads_with_its_pictures(parts, tmp_path):
    ex = Explainer(**parts, progress=False).set_scheduler("ddim")
    job = ex.start_run(PROMPT, num_inference_steps=4, seed=2)
    job.advance()
    job.advance()
    stopped = job.stop()
    stopped.save(tmp_path / "stopped.safetensors")
    loaded = Trace.load(tmp_path / "stopped.safetensors")
    assert loaded.status == "stopped" and len(loaded) == len(loaded.previews) == 2
