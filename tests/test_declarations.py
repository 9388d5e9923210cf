"""The typed run settings and what is declared once: settings round-trip through JSON for every family;
a hook point and a per-step scalar added by declaration alone are recorded, saved and loaded."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from diffexplain import Cascade, Explainer, Trace, names
from diffexplain.families import FAMILIES
from diffexplain.families.sd import StableDiffusion
from diffexplain.families.tiny_kandinsky import tiny_kandinsky_pipelines
from diffexplain.names import HookPoint
from diffexplain.settings import RunSettings, SettingsError
from diffexplain.step_scalars import StepScalar
from tests.tiny_chroma import tiny_chroma_pipeline
from tests.tiny_families import tiny_flux_pipeline, tiny_if_pipelines, tiny_sd3_pipeline, tiny_sdxl_pipeline
from tests.tiny_flux3 import tiny_flux3_pipeline
from tests.tiny_qwen_image import tiny_qwen_image_pipeline
from tests.tiny_sana import tiny_sana_pipeline, tiny_sana_sprint_pipeline
from tests.tiny_zimage import tiny_zimage_pipeline

PROMPT = "a red circle on the left"


def flux2_pipelines() -> tuple:
    """FLUX.2 klein (Base) and dev."""
    from tests.tiny_flux2 import tiny_dev_pipeline, tiny_klein_pipeline

    return tiny_klein_pipeline(), tiny_dev_pipeline()


def family_traces(parts: dict) -> list[Trace]:
    """One short trace of every family (the cascades' later stages on their previous stage's output)."""
    traces = [Explainer(**parts, progress=False).run(PROMPT, num_inference_steps=2, seed=0)]
    for pipe in (
        tiny_sdxl_pipeline(),
        tiny_sd3_pipeline(),
        tiny_flux_pipeline(),
        *flux2_pipelines(),
        tiny_zimage_pipeline(),
        tiny_qwen_image_pipeline(),
        tiny_sana_pipeline(),
        tiny_sana_sprint_pipeline(),
        tiny_chroma_pipeline(),
        tiny_flux3_pipeline(),
        tiny_flux3_pipeline(distilled=True),
    ):
        traces.append(
            Explainer.from_pipeline(pipe, progress=False).run(PROMPT, num_inference_steps=2, seed=0)
        )
    for first, second in (tiny_if_pipelines(), tiny_kandinsky_pipelines()):
        stages = {
            "a": Explainer.from_pipeline(first, progress=False),
            "b": Explainer.from_pipeline(second, progress=False),
        }
        cascade = Cascade(stages).run(
            PROMPT, seed=0, a={"num_inference_steps": 2}, b={"num_inference_steps": 2}
        )
        traces += [cascade.stages["a"], cascade.stages["b"]]
    return traces


def test_the_settings_of_every_family_round_trip_through_json(parts):
    traces = family_traces(parts)
    assert {t.run_settings.family for t in traces} == set(FAMILIES)
    for trace in traces:
        settings = trace.run_settings
        text = json.dumps(settings.to_json())  # plain JSON: no tensor, no tuple, no mapping proxy
        again = RunSettings.from_json(json.loads(text))
        assert again == settings, settings.family
        assert trace.settings == settings.to_json() and again.to_json() == json.loads(text)


def test_a_fork_derives_its_settings_with_replace(explainer):
    trace = explainer.run(PROMPT, num_inference_steps=3, guidance_scale=4.0, seed=1)
    fork = explainer.fork(trace, 1, guidance_scale=1.0, prompt="a blue square")
    changed = {
        f.name
        for f in dataclasses.fields(RunSettings)
        if getattr(fork.run_settings, f.name) != getattr(trace.run_settings, f.name)
    }
    # the loop records the fork's own attention (its tokens, the step its maps start at); the model's
    # fingerprint is hashed when asked (the source's was, to check the fork's weights)
    assert changed - {"attention", "model"} == {"guidance_scale", "do_cfg", "prompt"}, changed
    unhashed = [
        {k: v for k, v in t.run_settings.model.items() if "fingerprint" not in k} for t in (trace, fork)
    ]
    assert unhashed[0] == unhashed[1]
    assert fork.run_settings.attention["first_step"] == {"cond": 1, "uncond": 0}
    assert not fork.run_settings.do_cfg and fork.settings["prompt"] == "a blue square"


def test_settings_are_frozen_and_checked_in_one_place(explainer):
    settings = explainer.run(PROMPT, num_inference_steps=2, seed=0).run_settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.guidance_scale = 3.0  # type: ignore[misc]
    with pytest.raises(SettingsError, match="num_inference_steps should be a whole number"):
        settings.replace(num_inference_steps=0)
    with pytest.raises(SettingsError, match="scheduler class 'os.system' is not allowed"):
        settings.replace(scheduler={"class": "os.system", "config": {}})
    doc = settings.to_json()
    doc["made_by_a_newer_version"] = {"x": 1}  # unknown keys are kept and written back
    assert RunSettings.from_json(doc).to_json()["made_by_a_newer_version"] == {"x": 1}


def test_run_and_fork_have_one_signature_each(explainer):
    import inspect

    for finished, started in ((explainer.run, explainer.start_run), (explainer.fork, explainer.start_fork)):
        run_params = inspect.signature(finished).parameters
        assert list(run_params) == list(inspect.signature(started).parameters)
    assert inspect.signature(Explainer.run).return_annotation == "Trace"


# ---- declared once: a hook point and a per-step scalar ------------------------------------------------
DELTA = HookPoint(
    "step.model.delta",
    "Δ = ε_c − ε_u, what the text adds",
    "[B, C, h, w]",
    per_step=True,
    cfg_only=True,
    derive=lambda current: current["step.model.cond"] - current["step.model.uncond"],
    after="step.model.uncond",
)
LATENT_NORM = StepScalar(
    "latent_rms", "the RMS of x_t", read=lambda step: float(step.tensors["step.latents"].pow(2).mean().sqrt())
)


@pytest.fixture
def declaring(parts, monkeypatch) -> Explainer:
    """Stable Diffusion with one more hook point and one more per-step number: declarations, nothing else.
    (Defined here, not at import, so that its point is declared for this test only.)"""
    monkeypatch.setattr(names, "_DECLARED", dict(names._DECLARED))  # restored after the test

    class DeclaringFamily(StableDiffusion):
        name = "sd_declaring"
        extra_points = (DELTA,)
        step_scalars = (LATENT_NORM,)

    monkeypatch.setitem(FAMILIES, DeclaringFamily.name, DeclaringFamily)  # so that its files load
    family = DeclaringFamily(**{k: v for k, v in parts.items() if k != "scheduler"})
    return Explainer(family=family, scheduler=parts["scheduler"], progress=False)


def test_a_declared_point_and_scalar_are_recorded_saved_and_loaded(declaring, tmp_path):
    seen = []
    trace = declaring.run(
        PROMPT,
        num_inference_steps=3,
        guidance_scale=4.0,
        seed=0,
        hooks={"step.model.delta": lambda x, *, ctx: seen.append(ctx.step)},
    )
    assert seen == list(range(len(trace)))  # a hook at the declared point runs at every step
    delta = trace["step.model.delta"]
    assert torch.equal(delta, trace["step.model.cond"] - trace["step.model.uncond"])
    norms = trace.scalars("latent_rms")
    expected = [float(x.pow(2).mean().sqrt()) for x in trace["step.latents"]]
    assert norms == expected and len(set(norms)) == len(trace)
    assert trace.scalars("scheduler_sigma") == [None] * len(trace)  # PNDM has no σ table: none recorded

    trace.save(tmp_path / "t.safetensors")
    loaded = Trace.load(tmp_path / "t.safetensors")
    assert torch.equal(loaded["step.model.delta"], delta)
    assert loaded.scalars("latent_rms") == norms
    assert "step.model.delta" in loaded.hook_names


def test_a_declared_point_takes_replacements_like_any_other(declaring):
    """A derived point is a hook point like any other: its hooks see it, the trace keeps the replacement."""
    trace = declaring.run(
        PROMPT,
        num_inference_steps=2,
        guidance_scale=4.0,
        seed=0,
        hooks={"step.model.delta": lambda x, *, ctx: torch.zeros_like(x)},
    )
    assert torch.count_nonzero(trace["step.model.delta"]) == 0
    assert [r.name for r in trace.replacements] == ["step.model.delta"] * len(trace)


def test_the_scheduler_sigma_is_recorded_where_the_scheduler_has_one():
    explainer = Explainer.from_pipeline(tiny_sd3_pipeline(), progress=False)
    trace = explainer.run(PROMPT, num_inference_steps=3, seed=0)
    sigmas = trace.scalars("scheduler_sigma")
    scheduler = explainer.scheduler
    assert sigmas == sorted(sigmas, reverse=True) and all(0 < s <= 1 for s in sigmas)
    assert len(sigmas) == 3 and scheduler is not None


def test_a_file_written_before_a_point_was_declared_still_loads(declaring, tmp_path):
    """Additive: a trace saved without the new point loads with the points it was made with."""
    import json as json_module

    from safetensors import safe_open
    from safetensors.torch import save_file

    trace = declaring.run(PROMPT, num_inference_steps=2, seed=0, guidance_scale=4.0)
    path = tmp_path / "t.safetensors"
    trace.save(path)
    with safe_open(str(path), "pt") as f:
        meta = json_module.loads(f.metadata()["diffexplain"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    meta["hook_points"].remove("step.model.delta")
    meta["kept"].remove("step.model.delta")
    for step in meta["steps"]:
        del step["tensors"]["step.model.delta"]
        del step["scalars"]
    save_file(tensors, path, metadata={"diffexplain": json_module.dumps(meta)})
    loaded = Trace.load(path)
    assert "step.model.delta" not in loaded.hook_names and len(loaded) == len(trace)
    assert torch.equal(loaded["step.latents"], trace["step.latents"])
