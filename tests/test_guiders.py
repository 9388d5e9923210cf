"""Guiders: the loop's guidance step as an object. Parity with the pipelines' guidance_rescale and with
diffusers' own guider code; intervals; APG's momentum in restart points (forks bit-exact, files); reguide
with a guider; intermediates as hook points; errors that name what was wrong."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.guiders import (
    AdaptiveProjectedGuidance,
    ClassifierFreeGuidance,
    ClassifierFreeZeroStarGuidance,
    LTX2Guidance,
    PerturbedAttentionGuidance,
    SkipLayerGuidance,
    SmoothedEnergyGuidance,
)
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer
from diffusers.hooks import LayerSkipConfig, SmoothedEnergyGuidanceConfig

from diffexplain import Explainer, Trace
from diffexplain.guidance import guide
from diffexplain.guiders import (
    APG,
    CFG,
    CFGPlusPlus,
    CFGZeroStar,
    DiffusersGuider,
    QwenImageGuidance,
    RectifiedCFGPlusPlus,
    ZImageGuidance,
)
from tests.conftest import PROMPT
from tests.tiny_families import tiny_sdxl_pipeline

STEPS = 5
W = 6.0


@pytest.fixture
def ddim(parts) -> Explainer:
    return Explainer(**parts, progress=False).set_scheduler("ddim")


def sd_pipeline_latents(explainer: Explainer, seed: int, **kwargs) -> torch.Tensor:
    family = explainer.family
    pipe = StableDiffusionPipeline(
        **family.parts, scheduler=explainer.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    return pipe(PROMPT, num_inference_steps=STEPS, generator=generator, output_type="latent", **kwargs).images


def test_the_default_guidance_is_unchanged_and_records_no_guider(ddim):
    trace = ddim.run(PROMPT, num_inference_steps=STEPS, guidance_scale=W, seed=0)
    assert trace.run_settings.guider is None and not any(
        n.startswith("step.guider.") for n in trace.hook_names
    )
    expected = guide(trace["step.model.cond"], trace["step.model.uncond"], W)
    assert torch.equal(trace["step.guidance"], expected)


def test_guidance_rescale_equals_stable_diffusion_pipeline(ddim):
    trace = ddim.run(
        PROMPT, num_inference_steps=STEPS, guidance_scale=W, guidance_rescale=0.7, seed=3, decode=False
    )
    expected = sd_pipeline_latents(ddim, 3, guidance_scale=W, guidance_rescale=0.7)
    assert torch.equal(trace.final_latents, expected)
    assert trace.run_settings.guider == {"name": "cfg", "rescale": 0.7, "start": 0.0, "stop": 1.0}
    for i in range(STEPS):  # the factor rescale used: std(ε_c) / std(ε̂), ε̂ before rescaling
        cond, uncond = trace["step.model.cond", i], trace["step.model.uncond", i]
        factor = cond.std(dim=[1, 2, 3], keepdim=True) / guide(cond, uncond, W).std(
            dim=[1, 2, 3], keepdim=True
        )
        assert torch.equal(trace["step.guider.rescale_factor", i], factor)
    plain = ddim.run(PROMPT, num_inference_steps=STEPS, guidance_scale=W, seed=3, decode=False)
    assert not torch.equal(plain.final_latents, trace.final_latents)


def test_guidance_rescale_equals_the_sdxl_pipeline():
    pipe = tiny_sdxl_pipeline()
    pipe.set_progress_bar_config(disable=True)
    explainer = Explainer.from_pipeline(pipe, progress=False)
    trace = explainer.run(
        PROMPT, num_inference_steps=3, guidance_scale=5.0, guidance_rescale=0.5, seed=2, decode=False
    )
    expected = pipe(
        PROMPT, num_inference_steps=3, guidance_scale=5.0, guidance_rescale=0.5, output_type="latent",
        generator=torch.Generator().manual_seed(2),
    ).images  # fmt: skip
    assert torch.equal(trace.final_latents, expected)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (CFG(start=0.2, stop=0.8), dict(cls=ClassifierFreeGuidance, start=0.2, stop=0.8)),
        (CFG(rescale=0.5), dict(cls=ClassifierFreeGuidance, guidance_rescale=0.5)),
        (
            APG(momentum=-0.5, norm_threshold=2.0, eta=0.5),
            dict(
                cls=AdaptiveProjectedGuidance,
                adaptive_projected_guidance_momentum=-0.5,
                adaptive_projected_guidance_rescale=2.0,
                eta=0.5,
            ),
        ),
        (
            CFGZeroStar(zero_init_steps=1, stop=0.8),
            dict(cls=ClassifierFreeZeroStarGuidance, zero_init_steps=1, stop=0.8),
        ),
    ],
    ids=["cfg-interval", "cfg-rescale", "apg-momentum", "cfg-zero-star"],
)
def test_each_step_equals_diffusers_own_guider(ddim, ours, theirs):
    """Fed the step's ε_c and ε_u, diffusers' guider (set to each step as a modular pipeline sets it)
    gives the trace's ε̂ bit for bit, state (APG's momentum) included."""
    trace = ddim.run(PROMPT, num_inference_steps=STEPS, guidance_scale=W, guider=ours, seed=1)
    cls = theirs.pop("cls")
    guider = cls(guidance_scale=W, **theirs)
    for i, record in enumerate(trace.steps):
        guider.set_state(step=i, num_inference_steps=STEPS, timestep=torch.tensor(record.timestep))
        if i == 0 and isinstance(guider, AdaptiveProjectedGuidance):
            guider.momentum_buffer = MomentumBuffer(theirs["adaptive_projected_guidance_momentum"])
        expected = guider.forward(record.tensors["step.model.cond"], record.tensors["step.model.uncond"]).pred
        assert torch.equal(trace["step.guidance", i], expected), i


def test_an_interval_guides_only_inside_it(ddim):
    trace = ddim.run(
        PROMPT, num_inference_steps=STEPS, guidance_scale=W, guider=CFG(start=0.2, stop=0.6), seed=1
    )
    active = [int(0.2 * STEPS) <= i < int(0.6 * STEPS) for i in range(STEPS)]
    assert active == [False, True, True, False, False]
    for i, on in enumerate(active):
        cond, uncond = trace["step.model.cond", i], trace["step.model.uncond", i]
        expected = guide(cond, uncond, W) if on else cond
        assert torch.equal(trace["step.guidance", i], expected)


def test_forks_of_a_stateful_guider_are_bit_exact_and_survive_a_file(ddim, tmp_path):
    trace = ddim.run(PROMPT, num_inference_steps=STEPS, guidance_scale=W, guider=APG(momentum=-0.5), seed=4)
    states = [r.restart.guider_state for r in trace.steps]
    assert not states[0] and all("running_average" in s for s in states[1:])  # m starts at the first step
    for k in (1, 3):
        fork = ddim.fork(trace, k)
        assert torch.equal(fork.final_latents, trace.final_latents), k
    trace.save(tmp_path / "apg.safetensors")
    loaded = Trace.load(tmp_path / "apg.safetensors", explainer=ddim)
    assert loaded.run_settings.guider == trace.run_settings.guider
    assert torch.equal(loaded.steps[2].restart.guider_state["running_average"], states[2]["running_average"])
    assert torch.equal(loaded["step.guider.delta_parallel"], trace["step.guider.delta_parallel"])
    assert torch.equal(ddim.fork(loaded, 2).final_latents, trace.final_latents)


def test_reguide_with_a_guider_equals_a_run_of_that_step(ddim):
    plain = ddim.run(PROMPT, num_inference_steps=STEPS, guidance_scale=W, seed=6)
    apg = APG(momentum=-0.5)
    replay = plain.reguide(2, W, guider=apg)  # no model call
    rerun = ddim.fork(plain, 2, guider=apg)  # the same step, run again with the guider
    assert torch.equal(replay.eps_guided, rerun["step.guidance", 2])
    assert torch.equal(replay.pred_x0, pred_x0_at(rerun, 2))
    with_apg = ddim.run(PROMPT, num_inference_steps=STEPS, guidance_scale=W, guider=apg, seed=6)
    assert torch.equal(with_apg.reguide(3, W, guider=apg).eps_guided, with_apg["step.guidance", 3])


def pred_x0_at(trace: Trace, step: int) -> torch.Tensor:
    from diffexplain.noise_levels import pred_x0_from

    return pred_x0_from(trace["step.latents", step], trace["step.guidance", step], trace.steps[step].level)


def test_a_guiders_intermediates_are_hook_points(ddim):
    """Δ∥ replaced by zeros at its hook point is APG with η = 0, bit for bit."""
    zeroed = ddim.run(
        PROMPT, num_inference_steps=STEPS, guidance_scale=W, guider=APG(), seed=2,
        hooks={"step.guider.delta_parallel": lambda x, *, ctx: torch.zeros_like(x)},
    )  # fmt: skip
    eta0 = ddim.run(PROMPT, num_inference_steps=STEPS, guidance_scale=W, guider=APG(eta=0.0), seed=2)
    assert torch.equal(zeroed.final_latents, eta0.final_latents)
    assert {r.name for r in zeroed.replacements} == {"step.guider.delta_parallel"}
    assert "step.guider.delta_orthogonal" in zeroed.hook_names


def test_bad_guider_arguments_name_what_was_wrong(ddim):
    with pytest.raises(TypeError, match="expected a diffexplain guider"):
        ddim.run(PROMPT, num_inference_steps=2, guider="apg")
    with pytest.raises(ValueError, match="LTX2Guidance needs the predictions .* at most one perturbed-model"):
        ddim.run(PROMPT, num_inference_steps=2, guider=LTX2Guidance())
    with pytest.raises(ValueError, match="guidance_rescale=0.5 or guider=, not both"):
        ddim.run(PROMPT, num_inference_steps=2, guider=CFG(), guidance_rescale=0.5)
    with pytest.raises(ValueError, match=r"0 ≤ start < stop ≤ 1"):
        CFG(start=0.8, stop=0.2)
    with pytest.raises(ValueError, match=r"rescale \(guidance_rescale\) must be a number in \[0, 1\]"):
        CFG(rescale=2.0)


def test_diffusers_guiders_plug_in_directly(ddim, tmp_path):
    """A diffusers guider object runs as a modular pipeline calls it (one model call per branch): close to
    diffexplain's own APG (which batches the branches, as the classic pipelines do); its momentum is in
    the restart points, so forks (also from a file) are bit-exact."""
    theirs = AdaptiveProjectedGuidance(
        adaptive_projected_guidance_momentum=-0.5, adaptive_projected_guidance_rescale=2.0, eta=0.5
    )
    trace = ddim.run(PROMPT, num_inference_steps=STEPS, guidance_scale=W, guider=theirs, seed=8)
    ours = ddim.run(
        PROMPT, num_inference_steps=STEPS, guidance_scale=W, guider=APG(momentum=-0.5, norm_threshold=2.0, eta=0.5),
        seed=8,
    )  # fmt: skip
    assert torch.allclose(trace.final_latents, ours.final_latents, atol=1e-4)
    assert trace.run_settings.guider["name"] == "diffusers"
    assert trace.run_settings.guider["cls"] == "AdaptiveProjectedGuidance"
    assert theirs.momentum_buffer is None  # the caller's object is not the one that ran
    assert torch.equal(ddim.fork(trace, 3).final_latents, trace.final_latents)
    trace.save(tmp_path / "t.safetensors")
    loaded = Trace.load(tmp_path / "t.safetensors", explainer=ddim)
    assert torch.equal(ddim.fork(loaded, 2).final_latents, trace.final_latents)


@pytest.mark.parametrize(
    "make_guider",
    [
        lambda: ClassifierFreeGuidance(guidance_scale=5.0),
        lambda: ClassifierFreeGuidance(guidance_scale=5.0, guidance_rescale=0.5, start=0.2),
        lambda: AdaptiveProjectedGuidance(guidance_scale=5.0, adaptive_projected_guidance_momentum=-0.5),
        lambda: ClassifierFreeZeroStarGuidance(guidance_scale=5.0),
        lambda: PerturbedAttentionGuidance(
            guidance_scale=5.0,
            perturbed_guidance_start=0.0,
            perturbed_guidance_stop=1.0,
            perturbed_guidance_config=LayerSkipConfig(
                indices=[0],
                fqn="mid_block.attentions.0.transformer_blocks",
                skip_attention=False,
                skip_attention_scores=True,
                skip_ff=False,
            ),
        ),
        lambda: SkipLayerGuidance(
            guidance_scale=5.0,
            skip_layer_guidance_start=0.0,
            skip_layer_guidance_stop=1.0,
            skip_layer_config=LayerSkipConfig(
                indices=[0], fqn="down_blocks.1.attentions.0.transformer_blocks"
            ),
        ),
        lambda: SmoothedEnergyGuidance(
            guidance_scale=5.0,
            seg_guidance_config=SmoothedEnergyGuidanceConfig(
                indices=[0], fqn="mid_block.attentions.0.transformer_blocks"
            ),
        ),
    ],
    ids=["cfg", "cfg-rescale-interval", "apg", "cfg-zero-star", "pag", "slg", "seg"],
)
def test_a_diffusers_guider_equals_the_modular_sdxl_pipeline(make_guider):
    """diffusers' StableDiffusionXLModularPipeline with the guider, on tiny parts: the same latents bit for
    bit as explainer.run(guider=the same guider), with the attention maps on (the default)."""
    from diffusers.modular_pipelines import StableDiffusionXLModularPipeline

    from tests.tiny_families import tiny_sdxl_parts

    parts = tiny_sdxl_parts()
    pipe = StableDiffusionXLModularPipeline()
    pipe.update_components(**parts, guider=make_guider())
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        prompt=PROMPT, num_inference_steps=4, generator=torch.Generator().manual_seed(2), output="latents"
    )
    explainer = Explainer(**parts, progress=False)
    trace = explainer.run(
        PROMPT, num_inference_steps=4, guidance_scale=5.0, seed=2, decode=False, guider=make_guider()
    )
    assert torch.equal(trace.final_latents, expected)
    assert trace.attention("red").shape[0] == 1  # maps on: the capture followed the per-branch calls
    if len(type(pipe.guider)._input_predictions) == 3:  # PAG, SLG, SEG: the perturbed pass really ran
        assert any("step.guider.perturbed" in r.tensors for r in trace.steps)


# ---- CFG++: guidance in the sampler update ------------------------------------------------------------
def test_cfg_plus_plus_renoises_with_the_unconditional_prediction(ddim):
    trace = ddim.run(PROMPT, num_inference_steps=STEPS, guidance_scale=W, guider=CFGPlusPlus(lam=0.6), seed=5)
    scheduler = ddim.scheduler
    alphas = scheduler.alphas_cumprod
    for i, t in enumerate(trace.timesteps):
        cond, uncond = trace["step.model.cond", i], trace["step.model.uncond", i]
        eps_lambda = guide(cond, uncond, 0.6)  # ε̂_λ = ε_u + λ·Δ: what x̂0 is read from
        assert torch.equal(trace["step.guidance", i], eps_lambda)
        x_t = trace["step.latents", i]
        a_t = alphas[int(t)]
        prev = int(t) - scheduler.config.num_train_timesteps // STEPS
        a_prev = alphas[prev] if prev >= 0 else scheduler.final_alpha_cumprod
        x0 = (x_t - (1 - a_t) ** 0.5 * eps_lambda) / a_t**0.5
        assert torch.equal(trace["step.pred_x0", i], x0)
        assert torch.equal(
            trace["step.next", i], a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * uncond
        )  # ε_u, not ε̂
    assert torch.equal(ddim.fork(trace, 2).final_latents, trace.final_latents)
    assert trace.run_settings.guider == {"name": "cfg_pp", "lam": 0.6, "start": 0.0, "stop": 1.0}


def test_cfg_plus_plus_needs_ddim_and_says_so(parts):
    euler = Explainer(**parts, progress=False).set_scheduler("euler")
    with pytest.raises(ValueError, match=r"CFG\+\+ is written for DDIM.*set_scheduler\('ddim'\)"):
        euler.run(PROMPT, num_inference_steps=2, guidance_scale=W, guider=CFGPlusPlus())
    with pytest.raises(ValueError, match=r"lam \(CFG\+\+'s λ, in place of w\) must be a number in \[0, 1\]"):
        CFGPlusPlus(lam=5.0)


def test_seeds_are_counted_under_a_guidance_method(ddim):
    from diffexplain.guidance_counts import column_steps, count_seeds
    from diffexplain.jobs import drain

    off, on = count_seeds(ddim, PROMPT, scales=(1.0, W), seeds=2, num_inference_steps=3, guider=APG(eta=0.0))
    assert off.method is None and on.method == APG.label and on.label.startswith(APG.label)
    plain = count_seeds(ddim, PROMPT, scales=(W,), seeds=2, num_inference_steps=3)[0]
    differs = [a.tobytes() != b.tobytes() for a, b in zip(on.images, plain.images, strict=True)]
    assert any(differs)  # the method changed the pictures
    with pytest.raises(ValueError, match="needs guidance on"):
        drain(column_steps(ddim, PROMPT, 1.0, (0,), num_inference_steps=2, guider=APG()))


def test_a_perturbed_pass_is_its_own_branch_and_its_trace_forks_from_a_file(tmp_path):
    """PAG's extra pass is recorded at step.guider.perturbed (only in its step range), its settings
    (a LayerSkipConfig) survive a trace file, and a fork of the loaded file is bit-exact."""
    from tests.tiny_families import tiny_sdxl_parts

    explainer = Explainer(**tiny_sdxl_parts(), progress=False)
    pag = PerturbedAttentionGuidance(
        perturbed_guidance_start=0.0,
        perturbed_guidance_stop=0.5,
        perturbed_guidance_config=LayerSkipConfig(
            indices=[0], fqn="mid_block.attentions.0.transformer_blocks", skip_attention=False,
            skip_attention_scores=True, skip_ff=False,
        ),
    )  # fmt: skip
    trace = explainer.run(PROMPT, num_inference_steps=4, guidance_scale=5.0, seed=1, guider=pag)
    perturbed = [("step.guider.perturbed" in r.tensors) for r in trace.steps]
    assert perturbed == [False, True, False, False]  # diffusers' range: int(0·4) < i < int(0.5·4)
    assert not torch.equal(trace["step.guider.perturbed", 1], trace["step.model.cond", 1])
    trace.save(tmp_path / "pag.safetensors")
    loaded = Trace.load(tmp_path / "pag.safetensors", explainer=explainer)
    assert loaded.run_settings.guider["config"]["perturbed_guidance_config"]["indices"] == [0]
    assert torch.equal(explainer.fork(loaded, 1).final_latents, trace.final_latents)
    with pytest.raises(ValueError, match="cannot be replayed from a trace"):
        trace.reguide(1, 5.0, guider=DiffusersGuider(pag))


# ---- Rectified-CFG++: a predictor-corrector for flow models -------------------------------------------
def test_rectified_cfg_plus_plus_corrects_at_the_predicted_point():
    from tests.tiny_families import tiny_sd3_pipeline

    explainer = Explainer.from_pipeline(tiny_sd3_pipeline(), progress=False)
    trace = explainer.run(
        PROMPT, num_inference_steps=3, guidance_scale=4.0, seed=0, guider=RectifiedCFGPlusPlus()
    )
    sigmas = [float(s) for s in trace.scalars("scheduler_sigma")] + [0.0]  # σ_i, and σ_N = 0
    calls = []
    handle = explainer.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        fork = explainer.fork(trace, 1)
    finally:
        handle.remove()
    assert torch.equal(fork.final_latents, trace.final_latents)  # forks bit-exact
    assert len(calls) == 2 * 2  # steps 1 and 2: the usual call and the corrector's, both branches batched
    for i in range(len(trace)):
        v_c = trace["step.model.cond", i]
        predicted = trace["step.latents", i] + (sigmas[i + 1] - sigmas[i]) * v_c
        assert torch.allclose(trace["step.guider.predicted_latents", i], predicted, atol=1e-6)
        corrected = v_c + 4.0 * (
            trace["step.guider.corrector_cond", i] - trace["step.guider.corrector_uncond", i]
        )
        assert torch.equal(trace["step.guidance", i], corrected)
    with pytest.raises(ValueError, match="cannot be replayed from a trace without the model"):
        trace.reguide(1, 4.0, guider=RectifiedCFGPlusPlus())


def test_rectified_cfg_plus_plus_needs_a_flow_model(ddim):
    with pytest.raises(ValueError, match="Rectified-CFG\\+\\+ is written for flow models .* DDIMScheduler"):
        ddim.run(PROMPT, num_inference_steps=2, guidance_scale=W, guider=RectifiedCFGPlusPlus())


def test_z_image_guidance_is_the_z_image_pipelines_cfg_block():
    """Fed each step's ε_c and ε_u, the CFG block of diffusers' ZImagePipeline (transcribed here from
    pipeline_z_image.py) gives the trace's ε̂ bit for bit: scale, norm cap and truncation."""
    from tests.tiny_families import tiny_sd3_pipeline

    explainer = Explainer.from_pipeline(tiny_sd3_pipeline(), progress=False)
    guider = ZImageGuidance(normalization=1.05, truncation=0.5)
    trace = explainer.run(PROMPT, num_inference_steps=4, guidance_scale=4.0, seed=0, guider=guider)
    truncated = []
    for i, t in enumerate(trace.timesteps):
        scale = 4.0 - 1.0  # Z-Image's own s for the classic w = 4
        if (1000 - t) / 1000 > 0.5:
            scale = 0.0
        truncated.append(scale == 0.0)
        cond, uncond = trace["step.model.cond", i], trace["step.model.uncond", i]
        expected = []
        for j in range(cond.shape[0]):
            pos, neg = cond[j].float(), uncond[j].float()
            pred = pos + scale * (pos - neg)
            ori_pos_norm, new_pos_norm = torch.linalg.vector_norm(pos), torch.linalg.vector_norm(pred)
            max_new_norm = ori_pos_norm * 1.05
            if scale > 0 and new_pos_norm > max_new_norm:
                pred = pred * (max_new_norm / new_pos_norm)
            expected.append(pred)
        assert torch.equal(trace["step.guidance", i], torch.stack(expected)), i
    assert not truncated[0] and truncated[-1]  # the late steps (1 − σ > 0.5) run without guidance


def test_qwen_image_guidance_is_the_qwen_image_pipelines_cfg_block(ddim):
    """Fed each step's ε_c and ε_u, packed by QwenImagePipeline's own _pack_latents, the pipeline's CFG block
    (transcribed here from pipeline_qwenimage.py) gives the trace's ε̂, packed the same way, bit for bit."""
    from diffusers import QwenImagePipeline

    trace = ddim.run(PROMPT, num_inference_steps=STEPS, guidance_scale=W, seed=0, guider=QwenImageGuidance())
    for i in range(len(trace)):
        cond, uncond = trace["step.model.cond", i], trace["step.model.uncond", i]
        b, c, h, w = cond.shape
        noise_pred = QwenImagePipeline._pack_latents(cond, b, c, h, w)
        neg_noise_pred = QwenImagePipeline._pack_latents(uncond, b, c, h, w)
        comb_pred = neg_noise_pred + W * (noise_pred - neg_noise_pred)
        cond_norm = torch.norm(noise_pred, dim=-1, keepdim=True)
        noise_norm = torch.norm(comb_pred, dim=-1, keepdim=True)
        expected = comb_pred * (cond_norm / noise_norm)
        guided = QwenImagePipeline._pack_latents(trace["step.guidance", i], b, c, h, w)
        assert torch.equal(guided, expected), i
    assert trace["step.guider.token_rescale"].shape[-2:] == (h * w // 4, 1)
