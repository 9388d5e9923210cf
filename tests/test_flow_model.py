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
    assert meta["recipe"]["config"]["objective"] == "flow"


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
