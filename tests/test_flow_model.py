"""The flow dialect of the embedded model: training with the flow objective, the flow-sigma sampler run
by a plain ``StableDiffusionPipeline`` bit for bit, x̂0 = x_t − σ·v, forks, trace files and the names."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from diffexplain import Trace, load_model
from diffexplain.errors import TrainConfigError
from diffexplain.models.config import PRESETS, flow_scheduler_config, preset
from diffexplain.scheduler_state import FLOW_SIGMA_SCHEDULER_NAMES, names_for, scheduler_by_name
from diffexplain.training.run import train
from diffexplain.training.unet import flow_inputs
from diffexplain.views import words

PROMPT = "a red circle on the left"
STEPS = 5


@pytest.fixture(scope="module")
def flow_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for a few steps with the flow objective (seconds)."""
    out = tmp_path_factory.mktemp("flow") / "run"
    return train(dataclasses.replace(preset("tiny"), objective="flow"), out, progress=False)


@pytest.fixture(scope="module")
def flow(flow_folder: Path):
    return load_model(flow_folder, progress=False)


def pipeline_latents(explainer, name: str, guidance_scale: float, seed: int) -> torch.Tensor:
    base = explainer._base_scheduler_config
    pipe = StableDiffusionPipeline(
        unet=explainer.unet,
        vae=explainer.vae,
        text_encoder=explainer.text_encoder,
        tokenizer=explainer.tokenizer,
        scheduler=scheduler_by_name(name, base, names_for(base, {})),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        PROMPT,
        height=32,
        width=32,
        num_inference_steps=STEPS,
        guidance_scale=guidance_scale,
        generator=generator,
        output_type="latent",
    ).images


def test_flow_inputs_lie_on_the_straight_path_and_give_back_x0() -> None:
    gen = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(6, 4, 4, 4, generator=gen), torch.randn(6, 4, 4, 4, generator=gen)
    t = torch.tensor([0, 100, 400, 700, 950, 999])
    z_t, target, weight = flow_inputs(z0, noise, t, 1000, torch.Generator().manual_seed(1))
    assert torch.equal(weight, torch.ones(6))
    assert torch.allclose(target, noise - z0)
    # σ from z_t: the share of noise, within t's bin [t/T, (t + 1)/T)
    sigma = ((z_t - z0) / (noise - z0)).flatten(1).mean(1)
    assert torch.all(sigma >= t / 1000 - 1e-5) and torch.all(sigma < (t + 1) / 1000 + 1e-5)
    assert torch.allclose(z_t - sigma.view(-1, 1, 1, 1) * target, z0, atol=1e-5)  # x̂0 = x_t − σ·v


def test_flow_export_names_the_flow_sampler(flow_folder: Path) -> None:
    meta = json.loads((flow_folder / "model.json").read_text())
    assert meta["scheduler"] == {"class": "DPMSolverMultistepScheduler", "config": flow_scheduler_config()}
    assert meta["recipe"]["config"]["objective"] == "flow" and meta["name"] == "diffexplain-shapes-32-flow"


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0])
@pytest.mark.parametrize("name", list(FLOW_SIGMA_SCHEDULER_NAMES))
def test_flow_run_equals_the_plain_pipeline(flow, name: str, guidance_scale: float) -> None:
    flow.set_scheduler(name)
    try:
        trace = flow.run(
            PROMPT, num_inference_steps=STEPS, guidance_scale=guidance_scale, seed=3, decode=False
        )
    finally:
        flow.set_scheduler("flow_euler")
    assert torch.equal(trace.final_latents, pipeline_latents(flow, name, guidance_scale, seed=3))
    assert trace.settings["prediction_type"] == "flow_prediction"


def test_flow_pred_x0_is_x_t_minus_sigma_v_and_ends_at_the_picture(flow) -> None:
    trace = flow.run(PROMPT, num_inference_steps=STEPS, seed=4, decode=False)
    sigmas = trace.scalars("scheduler_sigma")
    assert sigmas[0] == pytest.approx(0.999) and sigmas == sorted(sigmas, reverse=True)
    for k, record in enumerate(trace.steps):
        x_t, v = trace["step.latents", k], trace["step.guidance", k]
        assert record.level.a == 1.0 and record.level.b == pytest.approx(-sigmas[k])
        assert torch.allclose(trace["step.pred_x0", k], x_t - sigmas[k] * v, atol=1e-6)
    # the last step lands on σ = 0: its x̂0 is the final latents (to rounding)
    assert torch.allclose(trace["step.pred_x0", -1], trace.final_latents, atol=1e-6)
    # the recorded signal fraction follows the flow path, not 1 − σ
    s = float(sigmas[0])
    assert trace.steps[0].level.alpha_bar == pytest.approx((1 - s) ** 2 / ((1 - s) ** 2 + s**2), rel=1e-5)


def test_flow_fork_is_bit_exact_at_every_step(flow) -> None:
    flow.set_scheduler("dpm++2m")  # a multistep solver: its history must travel with the fork
    try:
        trace = flow.run(PROMPT, num_inference_steps=STEPS, seed=6, decode=False)
        for k in range(STEPS):
            assert torch.equal(flow.fork(trace, k).final_latents, trace.final_latents), k
    finally:
        flow.set_scheduler("flow_euler")


def test_flow_trace_file_round_trip_and_fork(flow, tmp_path: Path) -> None:
    trace = flow.run(PROMPT, num_inference_steps=STEPS, seed=7, decode=False)
    trace.save(tmp_path / "flow.safetensors")
    loaded = Trace.load(tmp_path / "flow.safetensors", explainer=flow)
    assert loaded.settings["scheduler"]["config"]["use_flow_sigmas"] is True
    assert torch.equal(flow.fork(loaded, 2).final_latents, trace.final_latents)


def test_flow_model_offers_only_the_flow_samplers(flow) -> None:
    assert flow.scheduler_names == tuple(FLOW_SIGMA_SCHEDULER_NAMES)
    with pytest.raises(ValueError, match="unknown scheduler 'ddim'; valid names: flow_euler, dpm"):
        flow.set_scheduler("ddim")


def test_views_call_the_flow_output_a_velocity(flow) -> None:
    trace = flow.run(PROMPT, num_inference_steps=2, seed=0, decode=False)
    assert words(trace, flow)["output"] == "velocity"
    assert words(trace)["output"] == "velocity"


def test_flow_presets() -> None:
    assert PRESETS["flow"].objective == "flow" and PRESETS["flow-classroom"].objective == "flow"
    classroom = dataclasses.asdict(PRESETS["classroom"])
    flow_classroom = dataclasses.asdict(PRESETS["flow-classroom"])
    assert {k for k in classroom if classroom[k] != flow_classroom[k]} == {"name", "objective"}
    with pytest.raises(TrainConfigError, match="preset 'flow' continues a trained model"):
        train("flow", "/nonexistent/never-written", progress=False)


def test_resume_refuses_another_objective(flow_folder: Path, tmp_path: Path) -> None:
    import shutil

    run = shutil.copytree(flow_folder.parent, tmp_path / "run")
    with pytest.raises(TrainConfigError, match="objective: 'flow' there, 'epsilon' now"):
        train(preset("tiny"), run, progress=False)


# ---- the shipped flow model ----------------------------------------------------------------------
def test_cli_explain_runs_the_shipped_flow_model(tmp_path: Path) -> None:
    import contextlib
    import io

    from diffexplain.cli import main

    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        assert (
            main(["explain", PROMPT, "--model", "flow", "--out", str(out), "--steps", "3", "--device", "cpu"])
            == 0
        )
    trace = Trace.load(out / "trace.safetensors")
    assert trace.settings["prediction_type"] == "flow_prediction"
    assert trace.settings["scheduler"]["class"] == "DPMSolverMultistepScheduler"


def test_shipped_flow_model_shares_the_default_models_parts() -> None:
    from diffexplain import load_default, load_flow_default
    from diffexplain.models.default import flow_model_info

    eps, flow = load_default(progress=False), load_flow_default(progress=False)
    assert dict(eps.unet.config) == dict(flow.unet.config)
    assert eps.text_encoder.config.to_dict() == flow.text_encoder.config.to_dict()
    # the same VAE but for the per-channel standardisation of its latents, measured again on the flow
    # model's training pool and folded into (post_)quant_conv
    a, b = eps.vae.state_dict(), flow.vae.state_dict()
    assert {k for k in a if not torch.equal(a[k], b[k])} <= {
        f"{c}.{p}" for c in ("quant_conv", "post_quant_conv") for p in ("weight", "bias")
    }
    info = flow_model_info()
    assert info["recipe"]["config"]["objective"] == "flow" and info["recipe"]["preset"] == "flow"
    assert flow.scheduler.config.prediction_type == "flow_prediction"
    assert not torch.equal(eps.unet.conv_out.weight, flow.unet.conv_out.weight)  # trained on, not copied


@pytest.mark.slow
def test_shipped_flow_model_draws_plain_prompts_right() -> None:
    """A few plain prompts at the flow model's defaults, read back by the attribute checker."""
    from diffexplain import load_flow_default
    from diffexplain.data.checker import score
    from diffexplain.data.scenes import Scene, SceneObject, caption

    flow = load_flow_default(progress=False)
    scenes = [
        Scene((SceneObject("red", "circle", "left", "large"),), "light", say_size=(False,)),
        Scene((SceneObject("blue", "square", "top", "large"),), "dark", say_size=(False,)),
        Scene((SceneObject("green", "triangle", "right", "large"),), "light", say_size=(False,)),
        Scene((SceneObject("yellow", "circle", "bottom", "large"),), "dark", say_size=(False,)),
    ]
    right = 0
    for seed, scene in enumerate(scenes):
        trace = flow.run(caption(scene), seed=seed)
        right += score(trace.images[0], scene).all_right
    assert right >= 3, f"{right} of {len(scenes)} plain one-object prompts fully right"


def test_flow_img2img_equals_the_pipeline(flow) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline

    picture = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    settings = {"strength": 0.6, "num_inference_steps": STEPS, "guidance_scale": 5.0}
    trace = flow.run(PROMPT, image=picture, seed=2, decode=False, **settings)
    pipe = StableDiffusionImg2ImgPipeline(
        unet=flow.unet,
        vae=flow.vae,
        text_encoder=flow.text_encoder,
        tokenizer=flow.tokenizer,
        scheduler=scheduler_by_name("flow_euler", flow._base_scheduler_config, FLOW_SIGMA_SCHEDULER_NAMES),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        PROMPT,
        image=picture,
        generator=torch.Generator().manual_seed(2),
        output_type="latent",
        **settings,
    ).images
    assert torch.equal(trace.final_latents, expected)
    assert len(trace) == 3 and trace.scalars("scheduler_sigma")[0] == pytest.approx(0.5994, abs=1e-4)
    # the start lies on the straight path: (1 − σ)·x0 + σ·ε at the entry step's σ
    sigma = trace.scalars("scheduler_sigma")[0]
    start = (1 - sigma) * trace["image.latents"] + sigma * trace["image.noise"]
    assert torch.allclose(trace["latents.init"], start, atol=1e-5)


def test_flow_model_inversion_is_refused_with_what_to_use(flow) -> None:
    picture = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="predicts a flow velocity on flow sigmas.*invert with load_default"):
        flow.invert(picture, PROMPT, num_inference_steps=4)


def test_shipped_flow_model_equals_the_plain_pipeline() -> None:
    from diffexplain import load_flow_default

    flow = load_flow_default(progress=False)
    trace = flow.run(PROMPT, num_inference_steps=4, guidance_scale=5.0, seed=1, decode=False)
    pipe = StableDiffusionPipeline(
        unet=flow.unet,
        vae=flow.vae,
        text_encoder=flow.text_encoder,
        tokenizer=flow.tokenizer,
        scheduler=scheduler_by_name("flow_euler", flow._base_scheduler_config, FLOW_SIGMA_SCHEDULER_NAMES),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(1)
    expected = pipe(
        PROMPT, num_inference_steps=4, guidance_scale=5.0, generator=generator, output_type="latent"
    )
    assert torch.equal(trace.final_latents, expected.images)
