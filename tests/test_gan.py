"""The GAN beside the diffusion model: shapes, the shipped weights, sampling, training, resume and the CLI."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from diffexplain.cli import main
from diffexplain.errors import TrainConfigError
from diffexplain.models.gan import GAN_WEIGHTS_DIR, Discriminator, GANArch, Generator, load_gan
from diffexplain.training.checkpoint import read_checkpoint
from diffexplain.training.gan import gan_from_run, read_log, read_progress, train_gan
from diffexplain.training.gan_config import gan_preset


@pytest.mark.parametrize("size", [16, 32, 64])
def test_generator_and_discriminator_shapes(size: int) -> None:
    arch = GANArch(image_size=size, z_dim=16, width=8)
    generator, discriminator = Generator(arch).eval(), Discriminator(arch)
    pictures = generator(torch.randn(3, 16))
    assert pictures.shape == (3, 3, size, size)
    assert pictures.min() >= -1 and pictures.max() <= 1  # tanh: the dataset's [-1, 1]
    assert discriminator(pictures).shape == (3,)


@pytest.mark.parametrize("kwargs", [{"image_size": 48}, {"image_size": 4}, {"z_dim": 0}, {"width": 0}])
def test_bad_architectures_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        GANArch(**kwargs)


@pytest.fixture(scope="module")
def shipped():
    return load_gan()


def test_shipped_gan_samples_pil_images(shipped) -> None:
    images = shipped.sample(4, seed=0)
    assert len(images) == 4
    assert all(
        isinstance(im, Image.Image) and im.size == (shipped.arch.image_size,) * 2 and im.mode == "RGB"
        for im in images
    )
    assert isinstance(shipped.generator, torch.nn.Module)


def test_same_seed_same_pictures_other_seed_others(shipped) -> None:
    a = np.stack([np.asarray(im) for im in shipped.sample(4, seed=0)])
    b = np.stack([np.asarray(im) for im in shipped.sample(4, seed=0)])
    c = np.stack([np.asarray(im) for im in shipped.sample(4, seed=1)])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # picture i depends on (seed, i) only, not on how many are drawn
    assert np.array_equal(a[:2], np.stack([np.asarray(im) for im in shipped.sample(2, seed=0)]))


def test_shipped_gan_draws_single_objects_the_checker_reads(shipped) -> None:
    from diffexplain.data.checker import detect_objects

    pictures = shipped.sample(64, seed=3)
    singles = [found[0] for found in map(detect_objects, pictures) if len(found) == 1]
    assert len(singles) >= 0.7 * len(pictures)  # bench_gan.py measured 88 % on 900
    assert len({o.colour for o in singles}) >= 5 and len({o.position for o in singles}) == 5


@pytest.mark.parametrize(
    ("n", "seed", "error", "match"),
    [
        (0, 0, ValueError, "n must be at least 1, got 0"),
        (-3, 0, ValueError, "n must be at least 1"),
        (2.5, 0, TypeError, "n must be a whole number"),
        (True, 0, TypeError, "n must be a whole number"),
        (2, -1, ValueError, "seed must be in 0.."),
        (2, 2**63, ValueError, "seed must be in 0.."),
        (2, "0", TypeError, "seed must be a whole number"),
    ],
)
def test_bad_sample_arguments_name_the_argument(shipped, n, seed, error, match) -> None:
    with pytest.raises(error, match=match):
        shipped.sample(n, seed=seed)


def test_shipped_weights_are_small_fp16_safetensors_with_a_recipe() -> None:
    weights = GAN_WEIGHTS_DIR / "generator.safetensors"
    assert weights.stat().st_size < 5_000_000
    with safe_open(str(weights), framework="pt") as handle:
        dtypes = {handle.get_tensor(k).dtype for k in handle.keys()}  # noqa: SIM118
    assert torch.float16 in dtypes and dtypes <= {torch.float16, torch.int64}  # int64: BatchNorm's counter
    recipe = json.loads((GAN_WEIGHTS_DIR / "gan.json").read_text())["recipe"]
    for key in ("command", "config", "iterations", "seed", "train_time_s", "final_losses"):
        assert key in recipe, key
    assert recipe["iterations"] == recipe["config"]["iterations"]
    assert sorted(p.suffix for p in GAN_WEIGHTS_DIR.iterdir() if p.is_file()) == [
        ".json",
        ".safetensors",
        ".safetensors",
    ]


def test_load_gan_names_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="gan.json and generator.safetensors"):
        load_gan(tmp_path)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gan") / "run"
    train_gan("gan-tiny", out, device="cpu", progress=False)
    return out


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_training_changes_the_weights_and_logs_both_losses(run: Path) -> None:
    cfg = gan_preset("gan-tiny")
    torch.manual_seed(cfg.seed)  # the run's initial weights
    from diffexplain.training.gan import arch_of

    start = _weights(Generator(arch_of(cfg)))
    trained = _weights(gan_from_run(run, ema=False).generator)
    assert not torch.equal(start, trained)
    log = read_log(run)
    assert [e["iteration"] for e in log] == list(range(1, cfg.iterations + 1))
    assert all(np.isfinite(e["loss_d"]) and np.isfinite(e["loss_g"]) for e in log)
    assert sorted(read_progress(run)) == [0, 3, 6]  # the start and each checkpoint


def test_run_folder_holds_only_safetensors_and_json(run: Path) -> None:
    suffixes = {p.suffix for p in run.rglob("*") if p.is_file()}
    assert suffixes <= {".safetensors", ".json", ".jsonl"}


def test_resume_continues_from_the_checkpoint(run: Path, tmp_path: Path) -> None:
    """Training 6 then resuming to 9 gives the weights of training 9 in one go."""
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    train_gan(gan_preset("gan-tiny", iterations=9), resumed, device="cpu", progress=False)
    assert read_checkpoint(resumed / "checkpoint" / "generator")[1]["step"] == 9
    assert [e["iteration"] for e in read_log(resumed)][-4:] == [6, 7, 8, 9]
    straight = tmp_path / "straight"
    train_gan(gan_preset("gan-tiny", iterations=9), straight, device="cpu", progress=False)
    assert torch.equal(
        _weights(gan_from_run(resumed, ema=False).generator),
        _weights(gan_from_run(straight, ema=False).generator),
    )


def test_resume_with_other_networks_is_refused(run: Path) -> None:
    with pytest.raises(TrainConfigError, match="width: 8 there, 16 now"):
        train_gan(gan_preset("gan-tiny", width=16), run, device="cpu", progress=False)


def test_bad_config_values_are_refused() -> None:
    with pytest.raises(TrainConfigError, match="iterations must be a whole number of at least 1, got 0"):
        gan_preset("gan-tiny", iterations=0)
    with pytest.raises(TrainConfigError, match="unknown GAN preset 'gann'"):
        gan_preset("gann")


@pytest.mark.slow
def test_cli_trains_a_gan_preset_with_an_iteration_override(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        argv = ["train", "--preset", "gan-tiny", "--out", str(out), "--iterations", "4", "--device", "cpu"]
        assert main(argv) == 0
    assert f"GAN written to {out / 'model'}" in printed.getvalue()
    gan = load_gan(out / "model")
    assert gan.recipe["iterations"] == 4
    assert gan.recipe["command"].startswith("diffexplain train --preset gan-tiny")
    assert len(gan.sample(2, seed=0)) == 2


def test_cli_refuses_iterations_for_a_diffusion_preset(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "tiny", "--iterations", "4"])
    assert exit_info.value.code == 2
    assert "--iterations is for the GAN presets" in capsys.readouterr().err


def test_on_log_sees_each_entry_as_it_is_written(tmp_path: Path) -> None:
    seen: list[dict] = []
    train_gan("gan-tiny", tmp_path / "run", device="cpu", progress=False, on_log=seen.append)
    assert seen == read_log(tmp_path / "run")  # the callback got every line, in order


def test_cli_refuses_unet_init_for_a_gan_preset(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "gan-tiny", "--unet-init", "default"])
    assert exit_info.value.code == 2
    assert (
        "--unet-init is for the diffusion presets, not the GAN preset 'gan-tiny'" in capsys.readouterr().err
    )
