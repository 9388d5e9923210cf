"""The embedded pixel cascade: the training preset through the CLI (one stage at a time, or both), the
exported folder, its loading into diffusers' own IF pipelines and into a Cascade (bit-exact parity and
forks), the hybrid loss's math, clear errors, and the shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors import safe_open

from diffexplain.cli import main
from diffexplain.errors import TrainConfigError
from diffexplain.models.pixel_cascade import (
    PIXEL_CASCADE_DIR,
    load_pixel_cascade,
    pixel_cascade_pipelines,
    read_cascade_json,
)
from diffexplain.models.store import ModelFolderError
from diffexplain.training.cascade import (
    IF_NOISING_SCHEDULER,
    IF_SCHEDULER,
    crops_at,
    prediction_at,
    sr_inputs,
)
from diffexplain.training.cascade_config import CascadeTrainConfig, cascade_preset
from diffexplain.training.cascade_run import train_cascade
from diffexplain.training.variance_loss import PosteriorTerms, noisy_step_weights

PROMPT = "a red circle on the left"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny cascade trained through the CLI, one stage per call (as two processes would)."""
    out = tmp_path_factory.mktemp("cascade-run")
    assert main(["train", "--preset", "pixel-cascade-tiny", "--out", str(out), "--stage", "I"]) == 0
    assert not (out / "model").exists()  # stage II has not trained: nothing to export yet
    assert main(["train", "--preset", "pixel-cascade-tiny", "--out", str(out), "--stage", "II"]) == 0
    return out / "model"


def test_the_cli_exports_an_fp16_folder_in_ifs_format(tiny_folder):
    meta = read_cascade_json(tiny_folder)
    assert meta["recipe"]["preset"] == "pixel-cascade-tiny"
    assert "--preset pixel-cascade-tiny" in meta["recipe"]["command"]
    assert meta["stages"]["I"]["unet_config"]["out_channels"] == 6  # ε and a learned variance
    assert meta["stages"]["II"]["unet_config"]["in_channels"] == 6  # x_t beside the upscaled picture
    assert meta["stages"]["I"]["trained_steps"] == cascade_preset("pixel-cascade-tiny").base_steps
    for name in ("I", "II"):
        with safe_open(str(tiny_folder / f"stage_{name}.safetensors"), framework="pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118


def test_a_finished_run_resumes_to_the_same_folder(tiny_folder):
    run = tiny_folder.parent
    before = (run / "stage_I" / "log.jsonl").read_text()
    again = train_cascade("pixel-cascade-tiny", run, progress=False)
    assert again == tiny_folder
    assert (run / "stage_I" / "log.jsonl").read_text() == before  # no step was trained again


def test_a_resume_with_another_network_is_refused(tiny_folder):
    other = cascade_preset("pixel-cascade-tiny", base_blocks=(8, 8))
    with pytest.raises(TrainConfigError, match="base_blocks"):
        train_cascade(other, tiny_folder.parent, progress=False)


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0])
def test_the_cascade_equals_diffusers_if_pipelines(tiny_folder, guidance_scale):
    """No hooks, the defaults (maps on): the final picture equals IFPipeline then IFSuperResolutionPipeline
    bit for bit."""
    cascade = load_pixel_cascade(tiny_folder, progress=False)
    settings = dict(num_inference_steps=4, guidance_scale=guidance_scale)
    trace = cascade.run(PROMPT, seed=5, I=settings, II=settings)
    stage_1, stage_2 = pixel_cascade_pipelines(tiny_folder)
    common = dict(num_inference_steps=4, guidance_scale=guidance_scale, output_type="pt", clean_caption=False)
    low = stage_1(PROMPT, generator=torch.Generator().manual_seed(5), **common).images
    high = stage_2(image=low, prompt=PROMPT, generator=torch.Generator().manual_seed(5), **common).images
    assert torch.equal(trace.stage("I").final_latents, low)
    assert torch.equal(trace.last.final_latents, high)


def test_forks_replay_and_attention_maps_are_kept(tiny_folder):
    cascade = load_pixel_cascade(tiny_folder, progress=False)
    trace = cascade.run(PROMPT, seed=1, I=dict(num_inference_steps=4), II=dict(num_inference_steps=3))
    assert tuple(trace["I.step.latents", 0].shape) == (1, 3, 16, 16)  # pixels, not latents
    assert tuple(trace["II.step.latents", 0].shape) == (1, 3, 32, 32)
    assert torch.equal(cascade.fork(trace, "I", 2).last.final_latents, trace.last.final_latents)
    assert torch.equal(cascade.fork(trace, "II", 1).last.final_latents, trace.last.final_latents)
    assert trace.stage("I").attention("red").shape[-2:] == (16, 16)  # cross-attention layers: maps exist


def test_a_folders_noise_level_default_reaches_stage_two(tiny_folder):
    cascade = load_pixel_cascade(tiny_folder, progress=False)
    cascade.stages["II"].defaults["noise_level"] = 40  # as a model.json's "defaults" sets it
    steps = dict(num_inference_steps=2)
    trace = cascade.run(PROMPT, seed=1, I=steps, II=steps)
    assert trace["II.prompt.noise_level.cond"].tolist() == [40]
    assert cascade.run(PROMPT, seed=1, I=steps, II=steps | {"noise_level": 7})[
        "II.prompt.noise_level.cond"
    ].tolist() == [7]


def test_the_step_explorer_names_what_each_stage_predicts(tiny_folder):
    from diffexplain.widgets import StepExplorer

    cascade = load_pixel_cascade(tiny_folder, progress=False)
    steps = dict(num_inference_steps=2)
    explorer = StepExplorer(cascade.run(PROMPT, seed=1, I=steps, II=steps), stage="I")
    assert "noise predicted with prompt" in explorer.panel_titles["eps_c"].value
    assert "noisy pixels" in explorer.panel_titles["xt"].value
    explorer.stage_chooser.value = "II"  # stage II predicts v
    assert "velocity v predicted with prompt" in explorer.panel_titles["eps_c"].value
    assert "predicts the velocity v twice" in explorer.help.value


def test_the_schedulers_are_ifs(tiny_folder):
    """DDPM with a learned variance and dynamic thresholding, as IF's stages; stage II noises its input."""
    stage_1, stage_2 = pixel_cascade_pipelines(tiny_folder)
    for pipe in (stage_1, stage_2):
        config = pipe.scheduler.config
        assert (config.variance_type, config.thresholding, config.beta_schedule) == (
            "learned_range",
            True,
            "squaredcos_cap_v2",
        )
    # stage I predicts ε, stage II v after its crop phase (the tiny preset's last two steps)
    assert stage_1.scheduler.config.prediction_type == "epsilon"
    assert stage_2.scheduler.config.prediction_type == "v_prediction"
    assert stage_2.image_noising_scheduler.config.num_train_timesteps == 1000


def test_the_bound_is_zero_only_at_the_true_posterior():
    """KL(q ‖ p_θ) vanishes when p_θ has q's mean (ε̂ = ε) and variance (v = −1: log β̃_t), and grows otherwise."""

    scheduler = DDPMScheduler(**IF_SCHEDULER)
    terms = PosteriorTerms(scheduler.alphas_cumprod)
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1, torch.randn(4, 3, 8, 8, generator=gen)
    t = torch.tensor([10, 200, 600, 800])  # (near T, β_t and β̃_t meet: the two variances agree)
    x_t = scheduler.add_noise(x0, eps, t)
    at_truth = terms.vlb_bits(eps, -torch.ones_like(eps), x0, x_t, t)
    assert at_truth.abs().max() < 1e-4
    assert (terms.vlb_bits(eps, torch.ones_like(eps), x0, x_t, t) > at_truth).all()  # variance β_t instead
    assert (terms.vlb_bits(eps + 0.3, -torch.ones_like(eps), x0, x_t, t) > at_truth).all()  # mean off


def test_stage_two_trains_on_crops_then_on_whole_pictures():
    cfg = cascade_preset("pixel-cascade-tiny")  # crops of 16 for 2 steps, then whole 32×32 pictures
    assert [crops_at(cfg, step) for step in range(4)] == [16, 16, 0, 0]
    assert [prediction_at(cfg, "II", step) for step in range(4)] == ["epsilon"] * 2 + ["v_prediction"] * 2
    assert prediction_at(cfg, "I", 3) == "epsilon"
    assert prediction_at(cascade_preset("pixel-cascade-tiny", sr_prediction="epsilon"), "II", 3) == "epsilon"
    assert crops_at(cascade_preset("pixel-cascade-tiny", sr_crop_steps=0), 3) == 16  # 0: crops throughout
    noising = DDPMScheduler(**IF_NOISING_SCHEDULER)
    x0 = torch.rand(2, 3, 32, 32) * 2 - 1
    for crop, side in ((16, 16), (0, 32)):
        target, x_up, levels = sr_inputs(x0, cfg, noising, torch.Generator().manual_seed(0), crop)
        assert target.shape == x_up.shape == (2, 3, side, side) and levels.shape == (2,)
        assert (levels < cfg.sr_noise_max).all()
    assert torch.equal(target, x0)  # whole pictures: the targets are the dataset's own


def test_the_noisy_step_weights_are_the_x0_error_up_to_the_cap():
    alphas_cumprod = DDPMScheduler(**IF_SCHEDULER).alphas_cumprod
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weights = noisy_step_weights(alphas_cumprod, 20.0)
    assert torch.equal(weights[snr >= 1], torch.ones_like(weights[snr >= 1]))  # the clean steps keep 1
    middle = (snr < 1) & (snr > 1 / 20)
    assert torch.allclose(weights[middle], 1 / snr[middle])  # ε error / SNR = the x̂0 error
    assert weights.max() == 20.0 and weights[-1] == 20.0
    assert torch.equal(noisy_step_weights(alphas_cumprod, 0.0), torch.ones_like(alphas_cumprod))


def test_bad_configs_and_folders_name_what_is_wrong(tmp_path):
    with pytest.raises(TrainConfigError, match="unknown pixel-cascade preset 'pixel'"):
        cascade_preset("pixel")
    with pytest.raises(TrainConfigError, match="sr_crop"):
        CascadeTrainConfig(sr_crop=12)
    with pytest.raises(TrainConfigError, match="sr_crop_steps must be a whole number of at least 0, got -1"):
        CascadeTrainConfig(sr_crop_steps=-1)
    with pytest.raises(TrainConfigError, match="sr_prediction must be 'epsilon' or 'v_prediction', got 'x0'"):
        CascadeTrainConfig(sr_prediction="x0")
    with pytest.raises(TrainConfigError, match="sr_noisy_weight_cap must be 0 \\(off\\) or more, got -1"):
        CascadeTrainConfig(sr_noisy_weight_cap=-1)
    with pytest.raises(TrainConfigError, match="stages must name"):
        train_cascade("pixel-cascade-tiny", tmp_path / "run", stages=("III",), progress=False)
    with pytest.raises(ModelFolderError, match="no model.json"):
        read_cascade_json(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"format": "diffexplain-model"}))
    with pytest.raises(ModelFolderError, match="expected 'diffexplain-cascade'"):
        read_cascade_json(tmp_path)
    with pytest.raises(SystemExit):  # argparse: --stage takes I or II
        main(["train", "--preset", "pixel-cascade-tiny", "--stage", "III"])


def test_stage_is_refused_for_other_presets(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "gan-tiny", "--stage", "I", "--out", "unused"])
    assert exit_info.value.code == 2
    assert "--stage is for the pixel-cascade presets" in capsys.readouterr().err


def test_the_shipped_cascade_is_small_fp16_and_measured():
    meta = read_cascade_json(PIXEL_CASCADE_DIR)
    files = [PIXEL_CASCADE_DIR / f"stage_{n}.safetensors" for n in ("I", "II")]
    assert sum(f.stat().st_size for f in files) <= 15_000_000
    assert meta["recipe"]["command"].startswith("diffexplain train --preset pixel-cascade")
    for key in ("colour", "shape", "position"):
        assert key in meta["measured"]["one_object"]


@pytest.mark.slow
def test_the_shipped_cascade_draws_the_prompt_at_64_pixels():
    """At its default settings the cascade's 64×64 pictures show what plain captions say (measured on 300
    prompts in docs/pixel-cascade.md; here four, read by the same attribute checker), and so does stage I."""
    import torch.nn.functional as F

    from diffexplain import render
    from diffexplain.data.checker import score

    cascade = load_pixel_cascade(progress=False)
    prompts = [
        "a red circle on the left",
        "a blue square at the top",
        "a yellow triangle on the right",
        "a green circle at the bottom",
    ]
    trace = cascade.run(prompts, seed=0)
    assert tuple(trace.last.final_latents.shape) == (4, 3, 64, 64)
    right = [
        score(render.to_pil(x), p).all_right for x, p in zip(trace.last.final_latents, prompts, strict=True)
    ]
    assert sum(right) >= 3, right
    low = F.interpolate(trace.stage("I").final_latents, (64, 64), mode="bilinear", align_corners=True)
    right_low = [score(render.to_pil(x), p).all_right for x, p in zip(low, prompts, strict=True)]
    assert sum(right_low) >= 3, right_low
