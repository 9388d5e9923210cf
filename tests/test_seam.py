"""The model seam on Stable Diffusion: renamed hook points, old trace files, per-model hook points,
one guidance formula, scheduler configs a pipeline patched, and what a run does not do."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

import diffexplain
from diffexplain import SCHEDULER_NAMES, Explainer, Hook, Trace, TraceFileError, guide
from diffexplain.families import FAMILIES, StableDiffusion
from diffexplain.names import HOOK_POINTS
from diffexplain.scheduler_state import SCHEDULER_CLASSES
from tests.conftest import PROMPT

OLD_TRACE = Path(__file__).parent / "data" / "trace_v1.safetensors"  # written by diffexplain at cc0718c


# ---- renamed hook points ------------------------------------------------------------------------------
def test_old_hook_names_still_work_with_a_deprecation_warning(explainer):
    seen = []
    with pytest.warns(DeprecationWarning, match="'step.unet.cond' was renamed 'step.model.cond'"):
        trace = explainer.run(
            PROMPT,
            num_inference_steps=2,
            seed=0,
            hooks={"step.unet.cond": lambda x, *, ctx: seen.append(ctx.name)},
        )
    assert seen == ["step.model.cond", "step.model.cond"]
    with pytest.warns(DeprecationWarning, match="step.model.uncond"):
        old = trace["step.unet.uncond", 1]
    assert old is trace["step.model.uncond", 1]
    with pytest.warns(DeprecationWarning):
        assert "step.unet.cond" in trace


def test_old_names_in_ctx_current_and_globs(explainer):
    def read_old(x, *, ctx):
        return ctx.current["step.unet.cond"]  # a hook written before the rename: guidance off

    with pytest.warns(DeprecationWarning, match="renamed"):
        hooked = explainer.run(PROMPT, num_inference_steps=2, seed=1, hooks={"step.guidance": read_old})
        spy = Hook("step.unet.*", lambda x, *, ctx: None)
    assert spy.points == ("step.model.cond", "step.model.uncond")
    assert torch.equal(hooked["step.guidance", 0], hooked["step.model.cond", 0])


def test_trace_files_written_before_the_rename_load_and_fork(explainer):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # loading an old file is not the user's mistake
        old = Trace.load(OLD_TRACE, explainer=explainer)
    assert old.hook_names == tuple(p.name for p in HOOK_POINTS)
    assert "step.model.cond" in old.kept and old["step.model.uncond", 2].shape == (1, 4, 8, 8)
    assert old.replacements[0].name == "step.guidance" and old.conditioning["cond"]["embeds"].shape[0] == 1
    # the old file's run, rebuilt from its settings, is what the file holds; a fork at step 2 replays it
    again = explainer.run(
        PROMPT,
        num_inference_steps=3,
        guidance_scale=4.0,
        seed=3,
        hooks=[diffexplain.interventions.scale_delta(1.5, steps=1)],
    )
    # the file was written on another machine: CPU kernels may round differently in the last bits
    torch.testing.assert_close(again.final_latents, old.final_latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(explainer.fork(old, 2).final_latents, old.final_latents, rtol=1e-5, atol=1e-5)
    assert torch.equal(explainer.fork(old, 2).final_latents, explainer.fork(old, 2).final_latents)


def test_a_file_whose_hook_names_differ_is_refused(explainer, tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    trace = explainer.run(PROMPT, num_inference_steps=2, seed=0)
    path = tmp_path / "t.safetensors"
    trace.save(path)
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["diffexplain"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    assert meta["version"] == 3 and meta["hook_points"] == list(trace.hook_names)
    meta["hook_points"] = [*meta["hook_points"], "step.made.up"]
    save_file(tensors, path, metadata={"diffexplain": json.dumps(meta)})
    with pytest.raises(TraceFileError, match=r"hook points that differ.*unknown \['step.made.up'\]"):
        Trace.load(path)


# ---- hook points per explainer ------------------------------------------------------------------------
def test_hook_points_list_every_point_with_tensor_shape_and_kind(explainer):
    points = explainer.hook_points()
    assert [p.name for p in points if not p.name.startswith("attn.")] == [p.name for p in HOOK_POINTS]
    attention = [p for p in points if p.name.startswith("attn.")]
    assert attention and all(p.heavy and p.per_step for p in attention)  # four per text-attention layer
    assert len(attention) == 4 * len(explainer.family.attention_layers())
    cond = next(p for p in points if p.name == "step.model.cond")
    assert cond.per_step and cond.shape == "[B, C, h, w]" and not cond.cfg_only
    assert next(p for p in points if p.name == "step.model.uncond").cfg_only
    trace = explainer.run(PROMPT, num_inference_steps=1, seed=0)
    assert trace.hook_names == tuple(p.name for p in points)


def test_a_hook_for_another_familys_point_is_refused_naming_this_models_points(explainer):
    with pytest.raises(
        ValueError, match=r"unknown hook point for this model 'prompt.pooled.cond'.*This model's"
    ):
        explainer.run(
            PROMPT, num_inference_steps=1, seed=0, hooks={"prompt.pooled.cond": lambda x, *, ctx: None}
        )


def test_an_unsupported_pipeline_gets_an_error_naming_the_supported_ones(parts):
    class MyPipeline:
        scheduler = parts["scheduler"]

    with pytest.raises(
        ValueError, match="MyPipeline is not supported.*StableDiffusionXLPipeline.*StableDiffusion3Pipeline"
    ):
        Explainer.from_pipeline(MyPipeline())
    with pytest.raises(TypeError, match="no pipeline family takes the parts"):
        Explainer(scheduler=parts["scheduler"], unet=parts["unet"])


def test_families_are_picked_from_the_parts(explainer):
    # a new family is an addition: this test names the ones it relies on, not every one
    assert isinstance(explainer.family, StableDiffusion)
    assert {"sd", "sdxl", "sd3", "flux", "if", "if_sr", "kandinsky_prior", "kandinsky"} <= set(FAMILIES)
    assert all(FAMILIES[name].name == name for name in FAMILIES)
    assert "Explainer(unet=UNet2DConditionModel, family=sd" in repr(explainer)


# ---- one guidance formula ----------------------------------------------------------------------------
def test_reguide_and_the_interventions_use_the_loops_guidance(explainer):
    trace = explainer.run(PROMPT, num_inference_steps=3, seed=4, guidance_scale=6.0)
    for i in range(3):
        eps_c, eps_u = trace["step.model.cond", i], trace["step.model.uncond", i]
        assert torch.equal(guide(eps_c, eps_u, 6.0), trace["step.guidance", i])
        assert torch.equal(trace.reguide(i, 6.0).eps_guided, trace["step.guidance", i])
    hooked = explainer.run(
        PROMPT,
        num_inference_steps=3,
        seed=4,
        guidance_scale=6.0,
        hooks=[diffexplain.interventions.set_guidance(6.0)],
    )
    assert torch.equal(hooked.final_latents, trace.final_latents)


# ---- a scheduler config that a pipeline patched (steps_offset) ----------------------------------------
@pytest.mark.parametrize("scheduler_name", list(SCHEDULER_NAMES))
def test_a_scheduler_patched_by_the_pipeline_keeps_its_effective_config(parts, scheduler_name):
    cls = SCHEDULER_NAMES[scheduler_name][0]
    overrides = SCHEDULER_NAMES[scheduler_name][1]
    scheduler = cls(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers' own notice about the outdated steps_offset
        pipe = StableDiffusionPipeline(
            **{**parts, "scheduler": scheduler},
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    patched = pipe.scheduler.config
    if "steps_offset" in patched:
        assert patched.steps_offset == 1 and "steps_offset" in patched.get("_use_default_values", [])
    explainer = Explainer.from_pipeline(pipe, progress=False)
    trace = explainer.run(PROMPT, num_inference_steps=4, guidance_scale=4.0, seed=0, decode=False)
    expected = pipe(
        PROMPT,
        num_inference_steps=4,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    ).images
    assert torch.equal(trace.final_latents, expected)
    if scheduler_name == "ddpm":  # the repro: the pipeline's timesteps, not [750, 500, 250, 0]
        assert trace.timesteps == [751.0, 501.0, 251.0, 1.0]
    k = len(trace) // 2
    assert torch.equal(explainer.fork(trace, k).final_latents, trace.final_latents)


def test_every_allowed_scheduler_class_is_named(explainer):
    assert {"FlowMatchEulerDiscreteScheduler", "DDIMScheduler"} <= set(SCHEDULER_CLASSES)


# ---- no hidden work ------------------------------------------------------------------------------------
def test_a_run_does_not_hash_the_weights(parts, monkeypatch):
    import diffexplain.fingerprint as fp
    from tests.tiny_parts import tiny_unet

    calls = []
    monkeypatch.setattr(fp, "_digest", lambda state, scheme: calls.append(scheme) or "0" * 64)
    explainer = Explainer(**{**parts, "unet": tiny_unet()}, progress=False)  # weights never hashed before
    trace = explainer.run(PROMPT, num_inference_steps=2, seed=0)
    assert calls == [] and "fingerprint" not in trace.settings["model"]
    assert trace.fingerprint() == "0" * 10 and calls == [fp.SCHEME]
    assert trace.settings["model"]["fingerprint_scheme"] == fp.SCHEME


def test_the_fingerprint_is_the_same_on_any_thread_count():
    import diffexplain.fingerprint as fp

    # big enough that torch splits its sums across threads; the bit sums are exact in any order
    layer = torch.nn.Linear(2048, 1024)
    with torch.no_grad():
        layer.weight.normal_(generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    try:
        seen = set()
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            fp._CACHE.clear()
            seen.add(fp.weight_fingerprint(layer))
    finally:
        torch.set_num_threads(before)
    assert len(seen) == 1


def test_a_file_fingerprinted_under_an_older_scheme_is_matched_under_it(parts):
    import diffexplain.fingerprint as fp
    from tests.tiny_parts import tiny_unet

    unet = tiny_unet()
    for scheme in (0, 1):
        old = fp.weight_fingerprint(unet, scheme=scheme)
        assert old != fp.weight_fingerprint(unet)
        assert fp.same_weights(unet, old, None) == (True, fp.weight_fingerprint(unet))  # no scheme: 1, 0
        assert fp.same_weights(unet, old, scheme)[0]
    assert not fp.same_weights(tiny_unet(seed=1), fp.weight_fingerprint(unet), fp.SCHEME)[0]


def test_the_fingerprint_is_none_once_the_weights_changed(parts):
    from tests.tiny_parts import tiny_unet

    explainer = Explainer(**{**parts, "unet": tiny_unet()}, progress=False)
    trace = explainer.run(PROMPT, num_inference_steps=1, seed=0)
    with torch.no_grad():
        next(explainer.unet.parameters()).add_(1.0)  # a LoRA, an optimiser step, a hand edit
    assert trace.fingerprint() is None  # unknown rather than the hash of other weights


def test_restart_false_makes_no_restart_points(explainer):
    trace = explainer.run(PROMPT, num_inference_steps=2, seed=0, restart=False)
    assert all(s.restart is None for s in trace.steps)
    with pytest.raises(ValueError, match="no restart state"):
        explainer.fork(trace, 1)


def test_import_loads_neither_the_training_stack_nor_scipy():
    code = (
        "import sys, diffexplain; "
        "bad = [m for m in sys.modules if m.startswith(('scipy', 'diffexplain.training'))]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
