"""Runs that start from other runs or models: ``unet_init``, ``vae_init``, and the low-SNR loss floor."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

from diffexplain.cli import main
from diffexplain.data import held_out
from diffexplain.errors import TrainConfigError
from diffexplain.models.config import TrainConfig, preset, scheduler_config
from diffexplain.models.default import DEFAULT_MODEL_DIR
from diffexplain.models.store import load_model_parts
from diffexplain.training.checkpoint import read_checkpoint
from diffexplain.training.run import train
from diffexplain.training.unet import LOW_SNR_WEIGHT_CAP, min_snr_weights

TINY = preset("tiny")


def quiet_train(cfg: TrainConfig, out: Path) -> Path:
    with contextlib.redirect_stdout(io.StringIO()):
        return train(cfg, out, device="cpu", progress=False)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run to start from."""
    out = tmp_path_factory.mktemp("source") / "run"
    quiet_train(preset("tiny"), out)
    return out


# ---- the low-SNR floor ------------------------------------------------------------------------------
def test_low_snr_floor_on_hand_values() -> None:
    alphas_cumprod = torch.tensor([0.5, 0.1, 0.01, 1e-4], dtype=torch.float64)  # SNR 1, 1/9, 1/99, ~1e-4
    weights = min_snr_weights(alphas_cumprod, 5.0, floor=0.2)
    expected = torch.tensor([1.0, 0.2 * 9, 0.2 * 99, LOW_SNR_WEIGHT_CAP], dtype=torch.float64)
    assert torch.allclose(weights, expected, rtol=1e-4)


def test_low_snr_floor_only_raises_the_noisiest_steps() -> None:
    alphas_cumprod = DDPMScheduler(**scheduler_config()).alphas_cumprod
    plain = min_snr_weights(alphas_cumprod, 5.0)
    floored = min_snr_weights(alphas_cumprod, 5.0, floor=0.2)
    raised = floored > plain
    assert raised.any()
    assert int(raised.nonzero().min()) > 700  # only late (noisy) timesteps change
    assert torch.equal(floored[:700], plain[:700])
    assert floored.max() == LOW_SNR_WEIGHT_CAP
    assert torch.equal(min_snr_weights(alphas_cumprod, 5.0, floor=0.0), plain)


# ---- unet_init --------------------------------------------------------------------------------------
def test_unet_init_starts_from_the_source_runs_ema_and_keeps_its_vae(source: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY, unet_init=str(source), unet_lr=0.0, unet_steps=2)  # lr 0: nothing moves
    out = tmp_path / "warm"
    quiet_train(cfg, out)
    for stage in ("vae", "vae_decoder"):
        for name in ("checkpoint.safetensors", "checkpoint.json"):
            assert (out / stage / name).read_bytes() == (source / stage / name).read_bytes()
    assert (out / "unet" / "latent_pool.safetensors").read_bytes() == (
        source / "unet" / "latent_pool.safetensors"
    ).read_bytes()
    theirs, _ = read_checkpoint(source / "unet" / "checkpoint")
    mine, meta = read_checkpoint(out / "unet" / "checkpoint")
    assert meta["step"] == 2
    for key in (k for k in theirs if k.startswith("ema.")):
        assert torch.equal(mine["model." + key[4:]], theirs[key].to(mine["model." + key[4:]].dtype)), key
    # The export keeps the EMA as it is (no bias correction towards a random start).
    exported = load_model_parts(out / "model")["unet"].state_dict()
    for key, value in exported.items():
        assert torch.allclose(value, theirs["ema." + key].float(), atol=2e-3, rtol=1e-3), key


def test_unet_init_refuses_a_run_on_other_data(source: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY, unet_init=str(source), vae_steps=TINY.vae_steps + 1)
    with pytest.raises(TrainConfigError, match=r"vae_steps: 4 there, 5 here"):
        quiet_train(cfg, tmp_path / "other")


def test_unet_init_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY, unet_init=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="not a finished-U-Net run folder"):
        quiet_train(cfg, tmp_path / "out")


def test_unet_init_refuses_another_unet_shape(source: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY, unet_init=str(source), unet_blocks=(8, 16, 16))
    with pytest.raises(TrainConfigError, match="unet_blocks, unet_norm_groups, unet_pooled_text"):
        quiet_train(cfg, tmp_path / "out")


def test_unet_init_from_a_model_folder_uses_its_unet_and_vae(source: Path, tmp_path: Path) -> None:
    model = source / "model"
    cfg = dataclasses.replace(TINY, unet_init=str(model), unet_lr=0.0, unet_steps=2, decoder_steps=2)
    out = tmp_path / "run"
    folder = quiet_train(cfg, out)
    assert not (out / "vae").exists()  # no VAE training: the model's VAE is used ...
    assert (out / "vae_decoder" / "checkpoint.json").is_file()  # ... and its decoder fine-tuned further
    recipe = json.loads((folder / "model.json").read_text())["recipe"]
    assert recipe["config"]["vae_init"] == str(model)
    assert recipe["vae"] == {"stage": "vae_decoder", "step": 2, "from": str(model)}
    theirs = load_model_parts(model)
    mine = load_model_parts(folder)
    for key, value in mine["unet"].state_dict().items():  # lr 0: the U-Net it started from
        assert torch.allclose(value, theirs["unet"].state_dict()[key], atol=2e-3, rtol=1e-3), key
    encoder_keys = [k for k in mine["vae"].state_dict() if k.startswith("encoder.")]
    assert encoder_keys
    for key in encoder_keys:  # the encoder, so the latent space, is the model's
        assert torch.equal(mine["vae"].state_dict()[key], theirs["vae"].state_dict()[key]), key


def test_unet_init_from_a_model_folder_refuses_another_unet(source: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY, unet_init=str(source / "model"), unet_blocks=(8, 16, 16))
    with pytest.raises(
        TrainConfigError, match=r"block_out_channels: \[16, 32, 32\] there, \[8, 16, 16\] here"
    ):
        quiet_train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the decoder stage or anything else ran


def test_unet_init_from_a_model_folder_refuses_another_vae_init(source: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY, unet_init=str(source / "model"), vae_init="default")
    with pytest.raises(TrainConfigError, match="is a model folder, so its VAE is used"):
        quiet_train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ---- vae_init -----------------------------------------------------------------------------------------
def test_vae_init_trains_only_the_unet_on_the_shipped_vae(tmp_path: Path) -> None:
    cfg = dataclasses.replace(
        TINY, image_size=64, vae_blocks=(32, 64, 64), vae_init="default", latent_pool=16, decoder_steps=0
    )
    out = tmp_path / "run"
    folder = quiet_train(cfg, out)
    assert not (out / "vae").exists() and not (out / "vae_decoder").exists()
    shipped = load_model_parts(DEFAULT_MODEL_DIR)["vae"]
    trained = load_model_parts(folder)["vae"]
    x, _ = held_out(4, size=64).batch(range(4))
    with torch.no_grad():
        ours = trained.decode(trained.encode(x).latent_dist.mean).sample
        theirs = shipped.decode(shipped.encode(x).latent_dist.mean).sample
    # The refolded standardisation is nearly the identity: the same reconstructions.
    assert (ours - theirs).abs().max() < 0.05
    assert (ours - x).pow(2).mean() < 0.01


def test_vae_init_refuses_a_vae_of_another_size(tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY, vae_init="default")  # tiny: 32 px, blocks (8, 16)
    with pytest.raises(
        ValueError, match=r"vae_init='default': its VAE does not fit this config: block_out_channels"
    ):
        quiet_train(cfg, tmp_path / "run")


# ---- the command line -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["refine", "bind", "settle", "pairs"])
def test_continuing_preset_without_a_run_to_start_from_is_a_clear_error(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--preset", name, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert f"preset '{name}' continues a trained model" in err and "--unet-init" in err
    assert not (tmp_path / "run").exists()


def test_cli_unet_init_with_a_mismatched_run_names_the_field(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `default` has other VAE settings than the tiny source run.
    argv = ["train", "--preset", "default", "--unet-init", str(source), "--out", str(tmp_path / "run")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "was trained on another VAE or data" in err and "image_size: 32 there, 64 here" in err
    assert not (tmp_path / "run").exists()


def test_cli_unet_init_is_recorded_in_the_recipe(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--unet-init", str(source), "--out", str(out), "--device", "cpu"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    recipe = json.loads((out / "model" / "model.json").read_text())["recipe"]
    assert recipe["config"]["unet_init"] == str(source)
    assert f"--unet-init {source}" in recipe["command"]


# ---- resuming ---------------------------------------------------------------------------------------------
def test_resume_with_another_unet_is_refused_and_changes_nothing(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(source, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(TrainConfigError, match=r"unet_blocks: \[16, 32, 32\] there, \[16, 32, 64\] now"):
        quiet_train(dataclasses.replace(TINY, unet_blocks=(16, 32, 64)), out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_resume_with_more_steps_continues(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(source, out)
    quiet_train(dataclasses.replace(TINY, unet_steps=TINY.unet_steps + 2), out)
    assert read_checkpoint(out / "unet" / "checkpoint")[1]["step"] == TINY.unet_steps + 2


def test_resume_after_the_start_model_changed_is_refused(source: Path, tmp_path: Path) -> None:
    """A run pins the weights of the model folder it starts from: a changed folder (an upgrade of
    "default", a re-export) cannot be mixed into its checkpoints on resume."""
    model = tmp_path / "start_model"
    shutil.copytree(source / "model", model)
    cfg = dataclasses.replace(TINY, unet_init=str(model), unet_steps=2)
    out = tmp_path / "run"
    quiet_train(cfg, out)
    pinned = json.loads((out / "init_weights.json").read_text())
    assert set(pinned) == {"vae_init", "unet_init"}  # a model folder as unet_init also gives the VAE
    quiet_train(dataclasses.replace(cfg, unet_steps=3), out)  # unchanged: the resume goes on
    assert read_checkpoint(out / "unet" / "checkpoint")[1]["step"] == 3

    vae = (model / "vae.safetensors").read_bytes()
    (model / "vae.safetensors").write_bytes(vae[:-2] + bytes([vae[-2] ^ 1, vae[-1]]))  # one bit of one weight
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(TrainConfigError, match=r"vae_init='.*start_model' \(vae.safetensors\) changed"):
        quiet_train(dataclasses.replace(cfg, unet_steps=4), out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
