"""``diffexplain train`` on the ``tiny`` preset: losses fall, checkpoints are safe, runs resume exactly."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file

from diffexplain import load_model
from diffexplain.cli import main
from diffexplain.data import held_out
from diffexplain.errors import TrainConfigError
from diffexplain.models.config import PRESETS, preset, scheduler_config, unet_config, vae_config
from diffexplain.training.checkpoint import EMA, load_checkpoint, save_checkpoint
from diffexplain.training.export import debiased_ema, export_model, load_trained_vae
from diffexplain.training.run import train
from diffexplain.training.unet import (
    HIGH_NOISE_FROM,
    CaptionCache,
    draw_timesteps,
    min_snr_weights,
    train_unet,
)
from diffexplain.training.vae import finetune_decoder, train_vae, vae_psnr

PROMPT = "a red circle on the left"
TINY = preset("tiny")
STAGES = ("vae", "vae_decoder", "unet")


def log_lines(folder: Path, stage: str) -> list[dict]:
    return [json.loads(line) for line in (folder / stage / "log.jsonl").read_text().splitlines()]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder except the exported model (its recipe records the wall time)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "model" not in p.relative_to(folder).parts
    }


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished ``diffexplain train --preset tiny`` run (shared: copy it before changing anything)."""
    out = tmp_path_factory.mktemp("train") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", "--preset", "tiny", "--out", str(out), "--device", "cpu"]) == 0
    assert f"model written to {out / 'model'}" in printed.getvalue()
    return out


def copy_run(run: Path, target: Path) -> Path:
    shutil.copytree(run, target)
    return target


# ---- the CLI run and its exported model -----------------------------------------------------------
def test_cli_train_exports_a_model_that_loads_and_runs(run: Path) -> None:
    info = json.loads((run / "model" / "model.json").read_text())
    assert info["recipe"]["preset"] == "tiny"
    assert info["recipe"]["unet_step"] == TINY.unet_steps
    assert info["recipe"]["command"] == f"diffexplain train --preset tiny --out {run} --device cpu"
    assert info["recipe"]["config"] == json.loads((run / "config.json").read_text())
    explainer = load_model(run / "model", progress=False)
    size = TINY.image_size
    trace = explainer.run(PROMPT, num_inference_steps=2, height=size, width=size, seed=0)
    assert len(trace) == 2
    assert trace.images[0].size == (size, size)
    assert torch.isfinite(trace.image).all()
    # the exported U-Net is the debiased EMA of the training weights, not the raw last weights
    ckpt = load_file(str(run / "unet" / "checkpoint.safetensors"))
    last = {k[6:]: v for k, v in ckpt.items() if k.startswith("model.")}
    exported = explainer.unet.state_dict()
    assert exported.keys() == last.keys()
    assert not states_equal({k: v.half().float() for k, v in last.items()}, exported)


def test_exported_unet_sample_size_is_the_latent_size(run: Path) -> None:
    info = json.loads((run / "model" / "model.json").read_text())
    pool = load_file(str(run / "unet" / "latent_pool.safetensors"))["latents"]
    assert info["unet_config"]["sample_size"] == pool.shape[-1]


def test_exported_unet_has_the_presets_norm_groups(run: Path) -> None:
    info = json.loads((run / "model" / "model.json").read_text())
    assert info["unet_config"]["norm_num_groups"] == min(TINY.unet_norm_groups, TINY.unet_blocks[0])


def test_unet_norm_groups_are_capped_at_the_first_block_width() -> None:
    assert unet_config((32, 64, 128), 16, 8)["norm_num_groups"] == 8
    assert unet_config((16, 32, 32), 8, 32)["norm_num_groups"] == 16
    assert unet_config((32, 64, 128), 16)["norm_num_groups"] == 32  # diffusers' own default, capped


def test_cross_attention_per_level_sets_the_block_types() -> None:
    default = unet_config((16, 32, 32), 8)
    assert default["down_block_types"] == ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    assert default["up_block_types"] == ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    everywhere = unet_config((16, 32, 32), 8, cross_attention=(True, True, True))
    assert set(everywhere["down_block_types"]) == {"CrossAttnDownBlock2D"}
    # the up path mirrors the down path: its first block is the lowest level
    lowest_only = unet_config((16, 32, 32), 8, cross_attention=(False, False, True))
    assert lowest_only["down_block_types"] == ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"]
    assert lowest_only["up_block_types"] == ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"]
    unet = UNet2DConditionModel(**everywhere)
    assert len(unet.down_blocks[2].attentions) == 1 and len(unet.up_blocks[0].attentions) == 2
    with pytest.raises(TrainConfigError, match="cross_attention has 2 levels, block_out_channels 3"):
        unet_config((16, 32, 32), 8, cross_attention=(True, True))


def test_pooled_text_changes_the_prediction_with_no_extra_input() -> None:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_config((16, 32, 32), 8, 8, pooled_text=True)).eval()
    assert unet.config.addition_embed_type == "text"
    z, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    states = torch.randn(2, 5, 384)
    with torch.no_grad():
        a = unet(z, t, encoder_hidden_states=states[:1]).sample
        # drop the cross-attention path: only the pooled summary in the timestep embedding remains
        for block in (*unet.down_blocks, unet.mid_block, *unet.up_blocks):
            for attn in getattr(block, "attentions", []):
                for tb in attn.transformer_blocks:
                    tb.attn2.to_out[0].weight.zero_()
                    tb.attn2.to_out[0].bias.zero_()
        b = unet(z, t, encoder_hidden_states=states[:1]).sample
        c = unet(z, t, encoder_hidden_states=states[1:]).sample
    assert not torch.allclose(a, b)  # cross-attention mattered
    assert not torch.allclose(b, c)  # and so does the pooled caption, without any cross-attention


def test_export_of_a_run_from_before_norm_groups_and_pooled_text(tmp_path: Path) -> None:
    """A run folder written before these two fields existed exports with their old values."""
    old_style = dataclasses.replace(TINY, unet_norm_groups=32, unet_pooled_text=False)
    old = tmp_path / "old"
    train(old_style, old, device="cpu", progress=False, export_to=tmp_path / "first")
    saved = json.loads((old / "config.json").read_text())
    del saved["unet_norm_groups"], saved["unet_pooled_text"]
    (old / "config.json").write_text(json.dumps(saved))
    export_model(old, tmp_path / "m")
    info = json.loads((tmp_path / "m" / "model.json").read_text())
    assert info["unet_config"]["norm_num_groups"] == min(32, TINY.unet_blocks[0])
    assert "addition_embed_type" not in info["unet_config"]
    assert load_model(tmp_path / "m", progress=False).unet.config.addition_embed_type is None


def test_run_folder_holds_only_safetensors_and_json(run: Path) -> None:
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"checkpoint.safetensors", "checkpoint.json", "log.jsonl", "model.json"}
    for path in files:
        head = path.read_bytes()[:8]
        assert not head.startswith(b"\x80"), f"{path} is a pickle"
        assert not head.startswith(b"PK"), f"{path} is a zip (torch.save) archive"
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as f:  # parses the header and every tensor's extent
                assert list(f.keys())
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            assert all(json.loads(line) for line in path.read_text().splitlines())
        else:
            pytest.fail(f"unexpected file in the run folder: {path}")


def test_unknown_preset_names_the_valid_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(
        ValueError,
        match="unknown preset 'huge'; expected one of default, refine, bind, settle, pairs, classroom, flow, flow-classroom, tiny",
    ):
        train("huge", tmp_path / "run", progress=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "huge", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "huge" in err and all(name in err for name in PRESETS)
    assert not (tmp_path / "run").exists()


# ---- the losses fall -------------------------------------------------------------------------------
def test_vae_steps_improve_reconstruction(run: Path) -> None:
    """Validation PSNR (fixed held-out images) logged at the last step beats the untrained VAE's."""
    torch.manual_seed(TINY.seed)  # θ0 exactly as train_vae builds it
    vae0 = AutoencoderKL(**vae_config(tuple(TINY.vae_blocks)) | {"sample_size": TINY.image_size}).eval()
    pixels, _ = held_out(64, size=TINY.image_size).batch(range(64))
    before = vae_psnr(vae0, pixels)
    log = log_lines(run, "vae")
    assert [e["step"] for e in log] == list(range(1, TINY.vae_steps + 1))
    assert log[-1]["psnr_val"] > before
    trained, _ = load_trained_vae(run, TINY)
    assert vae_psnr(trained, pixels) > before


def test_unet_steps_lower_the_loss(run: Path) -> None:
    """The min-SNR-weighted ε loss on a fixed batch (fixed z0, ε, t) falls from θ0 to the trained weights."""
    pool = load_file(str(run / "unet" / "latent_pool.safetensors"))["latents"]
    captions = json.loads((run / "unet" / "latent_pool.json").read_text())
    z0 = pool[:16] / pool.std()
    cond = CaptionCache("cpu")(captions[:16])
    gen = torch.Generator().manual_seed(123)
    noise = torch.randn(z0.shape, generator=gen)
    scheduler = DDPMScheduler(**scheduler_config())
    t = torch.randint(0, scheduler.config.num_train_timesteps, (16,), generator=gen)
    weight = min_snr_weights(scheduler.alphas_cumprod, TINY.min_snr_gamma)[t]
    z_t = scheduler.add_noise(z0, noise, t)

    @torch.no_grad()
    def loss(unet: UNet2DConditionModel) -> float:
        eps = unet.eval()(z_t, t, encoder_hidden_states=cond).sample
        return (weight * (eps - noise).pow(2).mean(dim=(1, 2, 3))).mean().item()

    torch.manual_seed(TINY.seed)  # θ0 exactly as train_unet builds it
    unet = UNet2DConditionModel(**TINY.unet_config(pool.shape[-1]))
    before = loss(unet)
    ckpt = load_file(str(run / "unet" / "checkpoint.safetensors"))
    unet.load_state_dict({k[6:]: v for k, v in ckpt.items() if k.startswith("model.")})
    assert loss(unet) < 0.9 * before
    assert [e["step"] for e in log_lines(run, "unet")] == list(range(1, TINY.unet_steps + 1))


# ---- resuming --------------------------------------------------------------------------------------
def test_running_again_redoes_nothing(run: Path, tmp_path: Path) -> None:
    folder = copy_run(run, tmp_path / "run")
    before = snapshot(folder)
    exported = load_file(str(folder / "model" / "unet.safetensors"))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--preset", "tiny", "--out", str(folder), "--device", "cpu"]) == 0
    after = snapshot(folder)
    assert after.keys() == before.keys()
    changed = [name for name in before if before[name] != after[name]]
    assert changed == [], f"a finished stage was redone: {changed}"
    assert states_equal(load_file(str(folder / "model" / "unet.safetensors")), exported)


@pytest.mark.slow
def test_unet_resume_continues_bit_exactly(run: Path, tmp_path: Path) -> None:
    """Stopping after a checkpoint and running again gives the very weights of an uninterrupted run."""
    # a warm-up longer than the run keeps the learning rate independent of the planned total
    cfg = dataclasses.replace(TINY, unet_warmup=100, checkpoint_every=2)
    vae, _ = load_trained_vae(run, TINY)
    results = {}
    for name, plan in (("resumed", (2, 4)), ("straight", (4,))):
        folder = tmp_path / name
        (folder / "unet").mkdir(parents=True)
        for pool_file in ("latent_pool.safetensors", "latent_pool.json"):  # skip re-encoding
            shutil.copy(run / "unet" / pool_file, folder / "unet" / pool_file)
        for steps in plan:
            unet, ema, _ = train_unet(dataclasses.replace(cfg, unet_steps=steps), folder, vae, progress=False)
        results[name] = (unet.state_dict(), ema.state_dict(), folder)
    (unet_a, ema_a, folder_a), (unet_b, ema_b, folder_b) = results["resumed"], results["straight"]
    assert [e["step"] for e in log_lines(folder_a, "unet")] == [1, 2, 3, 4]  # continued at step 3
    assert [e["loss"] for e in log_lines(folder_a, "unet")] == [
        e["loss"] for e in log_lines(folder_b, "unet")
    ]
    assert states_equal(unet_a, unet_b)
    assert states_equal(ema_a, ema_b)
    assert json.loads((folder_a / "unet" / "checkpoint.json").read_text())["step"] == 4


def test_decoder_resume_continues_bit_exactly(run: Path, tmp_path: Path) -> None:
    states = {}
    for name, plan in (("resumed", (1, 2)), ("straight", (2,))):
        folder = tmp_path / name
        shutil.copytree(run / "vae", folder / "vae")  # stage 1 done: train_vae only loads it
        for steps in plan:
            vae = finetune_decoder(
                train_vae(TINY, folder, progress=False), TINY, folder, steps=steps, progress=False
            )
        assert json.loads((folder / "vae" / "checkpoint.json").read_text())["step"] == TINY.vae_steps
        states[name] = vae.state_dict()
    assert [e["step"] for e in log_lines(tmp_path / "resumed", "vae_decoder")] == [1, 2]
    assert states_equal(states["resumed"], states["straight"])


def test_vae_resume_continues_bit_exactly(tmp_path: Path) -> None:
    states = {}
    for name, plan in (("resumed", (1, 2)), ("straight", (2,))):
        for steps in plan:
            vae = train_vae(dataclasses.replace(TINY, vae_steps=steps), tmp_path / name, progress=False)
        states[name] = vae.state_dict()
    assert states_equal(states["resumed"], states["straight"])


# ---- min-SNR weights and the EMA's bias correction --------------------------------------------------
def test_min_snr_weights_on_hand_values() -> None:
    alphas_cumprod = torch.tensor(
        [0.999, 0.9, 5 / 6, 0.5, 0.01], dtype=torch.float64
    )  # SNR 999, 9, 5, 1, 1/99
    weights = min_snr_weights(alphas_cumprod, 5.0)
    expected = torch.tensor([5 / 999, 5 / 9, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(weights, expected, rtol=1e-5)


def test_min_snr_weights_on_the_training_schedule() -> None:
    alphas_cumprod = DDPMScheduler(**scheduler_config()).alphas_cumprod
    snr = alphas_cumprod / (1 - alphas_cumprod)
    for gamma in (1.0, 5.0):
        weights = min_snr_weights(alphas_cumprod, gamma)
        assert weights.shape == alphas_cumprod.shape
        assert torch.isfinite(weights).all()
        low = snr <= gamma
        assert low.any() and (~low).any()
        assert torch.equal(weights[low], torch.ones_like(weights[low]))
        assert torch.allclose(weights[~low], gamma / snr[~low])
        assert (weights[~low] < 1).all()
    assert torch.equal(min_snr_weights(alphas_cumprod, 0.0), torch.ones_like(alphas_cumprod))


def test_high_noise_share_draws_that_share_from_the_noisiest_steps() -> None:
    n, T = 40_000, 1000
    uniform = draw_timesteps(n, T, 0.0, torch.Generator().manual_seed(3))
    assert torch.equal(uniform, torch.randint(0, T, (n,), generator=torch.Generator().manual_seed(3)))
    skewed = draw_timesteps(n, T, 0.25, torch.Generator().manual_seed(3))
    assert skewed.min() >= 0 and skewed.max() < T
    noisiest = (T - HIGH_NOISE_FROM) / T  # uniform t lands there too
    expected = 0.25 + 0.75 * noisiest
    assert (skewed >= HIGH_NOISE_FROM).float().mean().item() == pytest.approx(expected, abs=0.01)
    assert (uniform >= HIGH_NOISE_FROM).float().mean().item() == pytest.approx(noisiest, abs=0.01)


def test_debiased_ema_recovers_the_weighted_average_of_the_trained_weights() -> None:
    decay, n = 0.9, 7
    model = torch.nn.Linear(3, 2)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    ema = EMA(model, decay)
    gen = torch.Generator().manual_seed(0)
    history = []
    for _ in range(n):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        history.append({k: v.clone() for k, v in model.state_dict().items()})
        ema.update(model)
    weights = np.array([(1 - decay) * decay ** (n - i) for i in range(1, n + 1)])
    weights /= weights.sum()
    fixed = debiased_ema(ema.state_dict(), decay=decay, updates=n, init=init)
    for key in init:
        average = sum(w * h[key] for w, h in zip(weights, history, strict=True))
        assert torch.allclose(fixed[key], average, atol=1e-5)
        assert not torch.allclose(ema.state_dict()[key], average, atol=1e-2)  # the raw EMA still holds θ0


def test_debiased_ema_of_constant_weights_is_those_weights() -> None:
    init = {"w": torch.full((4,), 10.0)}
    ema = {"w": 0.5**3 * init["w"] + (1 - 0.5**3) * torch.tensor([1.0, -2.0, 3.0, 0.25])}
    fixed = debiased_ema(ema, decay=0.5, updates=3, init=init)
    assert torch.allclose(fixed["w"], torch.tensor([1.0, -2.0, 3.0, 0.25]))
    assert fixed["w"].dtype == torch.float32


def test_checkpoint_step_comes_from_the_weights_file(tmp_path: Path) -> None:
    """A reader that sees new weights next to the previous JSON (export mid-run) still gets their step."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    path = tmp_path / "checkpoint"
    save_checkpoint(path, model=model, optimizer=opt, ema=EMA(model, 0.9), step=100, info={})
    old_json = path.with_suffix(".json").read_text()
    save_checkpoint(path, model=model, optimizer=opt, ema=EMA(model, 0.9), step=200, info={})
    path.with_suffix(".json").write_text(old_json)  # as if caught between the two replacements
    assert load_checkpoint(path, model=model, optimizer=opt, ema=None)["step"] == 200
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_weights_get_the_permissions_of_its_json(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "checkpoint"
    save_checkpoint(
        path, model=model, optimizer=torch.optim.AdamW(model.parameters()), ema=None, step=1, info={}
    )
    weights_mode = path.with_suffix(".safetensors").stat().st_mode & 0o777
    assert weights_mode == path.with_suffix(".json").stat().st_mode & 0o777  # safetensors alone: 0600


def test_latent_pool_gets_the_permissions_of_its_captions(run: Path) -> None:
    pool = run / "unet" / "latent_pool.safetensors"
    assert pool.stat().st_mode & 0o777 == (run / "unet" / "latent_pool.json").stat().st_mode & 0o777
