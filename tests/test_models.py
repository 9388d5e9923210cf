"""Model folders: the embedded default model offline, save/load round trips, clear errors, overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from diffexplain import Trace, load_default, load_model
from diffexplain.models.config import scheduler_config, unet_config, vae_config
from diffexplain.models.default import DEFAULT_MODEL_DIR
from diffexplain.models.store import ModelFolderError, load_model_parts, save_model
from diffexplain.probe import trace_fingerprint, weight_fingerprint

PROMPT = "a red circle on the left"
UNET_BLOCKS = (16, 32, 32)
VAE_BLOCKS = (8, 16)  # two blocks: latents are half the image size


def small_parts(seed: int = 0) -> dict:
    """A small untrained U-Net and VAE of the default model's architecture, seeded."""
    torch.manual_seed(seed)
    ucfg = unet_config(UNET_BLOCKS, 8)
    vcfg = vae_config(VAE_BLOCKS) | {"sample_size": 16, "scaling_factor": 1.5}
    return {
        "unet": UNet2DConditionModel(**ucfg).eval(),
        "vae": AutoencoderKL(**vcfg).eval(),
        "unet_config": ucfg,
        "vae_config": vcfg,
    }


def write_small_model(folder: Path, *, seed: int = 0, dtype: torch.dtype = torch.float16) -> dict:
    """Save :func:`small_parts` to ``folder`` (as ``diffexplain export`` does) and return the parts."""
    parts = small_parts(seed)
    save_model(
        folder,
        **parts,
        scheduler={"class": "DDIMScheduler", "config": scheduler_config()},
        recipe={"preset": "test", "seed": seed},
        dtype=dtype,
    )
    info = json.loads((folder / "model.json").read_text())
    info |= {"name": f"small-{seed}", "defaults": {"num_inference_steps": 2, "guidance_scale": 3.0}}
    (folder / "model.json").write_text(json.dumps(info))
    return parts


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small fp16 model folder, shared read-only by the tests."""
    folder = tmp_path_factory.mktemp("small") / "model"
    write_small_model(folder)
    return folder


@pytest.fixture
def broken_dir(model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of ``model_dir`` for a test to damage."""
    folder = tmp_path / "model"
    folder.mkdir()
    for path in model_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


# ---- the embedded default model -------------------------------------------------------------------
@pytest.mark.slow
def test_load_default_works_offline_in_a_fresh_process() -> None:
    code = (
        "import json, numpy as np, diffexplain\n"
        "ex = diffexplain.load_default(progress=False)\n"
        f"trace = ex.run({PROMPT!r}, num_inference_steps=2, seed=0)\n"
        "img = np.asarray(trace.images[0], dtype=float)\n"
        "print(json.dumps({'size': list(trace.images[0].size), 'std': img.std(), 'steps': len(trace),"
        " 'name': ex.model_name}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DIFFEXPLAIN_MODEL"}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    info = json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())
    assert result["size"] == [info["vae_config"]["sample_size"]] * 2
    assert result["steps"] == 2
    assert result["std"] > 1.0  # an image with something in it, not a flat colour
    assert result["name"] == info["name"]


# ---- save / load round trips ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_saved_model_loads_bit_exactly(tmp_path: Path, dtype: torch.dtype) -> None:
    parts = write_small_model(tmp_path / "m", dtype=dtype)
    loaded = load_model_parts(tmp_path / "m")
    for name in ("unet", "vae"):
        original, back = parts[name].state_dict(), loaded[name].state_dict()
        assert original.keys() == back.keys()
        for key, value in original.items():
            assert back[key].dtype == torch.float32
            assert torch.equal(back[key], value.to(dtype).float()), f"{name}.{key} changed on the round trip"
    assert type(loaded["scheduler"]).__name__ == "DDIMScheduler"
    assert loaded["scheduler"].config.beta_schedule == scheduler_config()["beta_schedule"]
    assert loaded["meta"]["recipe"] == {"preset": "test", "seed": 0}


def test_load_model_builds_an_explainer_from_the_folder(model_dir: Path) -> None:
    explainer = load_model(model_dir, progress=False)
    saved = load_model_parts(model_dir)["unet"].state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in explainer.unet.state_dict().items())
    assert explainer.model_name == "small-0"
    assert explainer.defaults == {"num_inference_steps": 2, "guidance_scale": 3.0}
    trace = explainer.run(PROMPT, seed=0)  # steps and guidance from the folder's defaults
    assert len(trace) == 2
    assert trace.settings["guidance_scale"] == 3.0


def test_saved_weights_are_as_readable_as_model_json(model_dir: Path) -> None:
    """safetensors writes 0600 files; a model folder shared with other users must be readable by them."""
    mode = (model_dir / "model.json").stat().st_mode & 0o777
    for name in ("unet.safetensors", "vae.safetensors"):
        assert (model_dir / name).stat().st_mode & 0o777 == mode, name


# ---- clear errors for damaged folders -------------------------------------------------------------
@pytest.mark.parametrize("missing", ["model.json", "unet.safetensors", "vae.safetensors"])
def test_missing_file_is_named(broken_dir: Path, missing: str) -> None:
    (broken_dir / missing).unlink()
    with pytest.raises(ModelFolderError, match=missing.replace(".", r"\.")):
        load_model(broken_dir, progress=False)


def test_folder_that_does_not_exist_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match=r"nowhere.*model\.json"):
        load_model(tmp_path / "nowhere", progress=False)


def _edit_json(folder: Path, change) -> None:
    info = json.loads((folder / "model.json").read_text())
    change(info)
    (folder / "model.json").write_text(json.dumps(info))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "model.json").write_text('{"format": "diffexplain-model", '), "not valid JSON"),
        (lambda f: (f / "model.json").write_bytes(b"\xff\xfe\x00garbage"), "not valid JSON"),
        (lambda f: (f / "model.json").write_text("[1, 2]"), "not a diffexplain model"),
        (lambda f: _edit_json(f, lambda i: i.update(version=99)), "format version 99"),
        (lambda f: _edit_json(f, lambda i: i.pop("vae_config")), "'vae_config'"),
        (lambda f: _edit_json(f, lambda i: i["scheduler"].update({"class": "Nope"})), "DDIMScheduler"),
        (lambda f: _edit_json(f, lambda i: i["unet_config"].update(colour="red")), "unet_config"),
        (lambda f: _edit_json(f, lambda i: i["vae_config"].update(block_out_channels=[8])), "vae_config"),
    ],
)
def test_corrupt_model_json_is_named(broken_dir: Path, damage, message: str) -> None:
    damage(broken_dir)
    with pytest.raises(ModelFolderError, match="model\\.json") as info:
        load_model(broken_dir, progress=False)
    assert message in str(info.value)


@pytest.mark.parametrize("name", ["unet", "vae"])
def test_truncated_weights_are_named(broken_dir: Path, name: str) -> None:
    path = broken_dir / f"{name}.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFolderError, match=f"{name}\\.safetensors"):
        load_model(broken_dir, progress=False)


def test_weights_that_do_not_fit_the_config_are_named_briefly(broken_dir: Path) -> None:
    _edit_json(broken_dir, lambda i: i["unet_config"].update(block_out_channels=[16, 32, 64]))
    with pytest.raises(ModelFolderError, match=r"unet\.safetensors.*unet_config.*of another shape") as info:
        load_model(broken_dir, progress=False)
    assert len(str(info.value)) < 500  # not load_state_dict's list of every tensor


def test_weights_of_another_model_are_named(broken_dir: Path) -> None:
    (broken_dir / "unet.safetensors").write_bytes((broken_dir / "vae.safetensors").read_bytes())
    with pytest.raises(ModelFolderError, match=r"unet\.safetensors.*missing.*unexpected"):
        load_model(broken_dir, progress=False)


# ---- DIFFEXPLAIN_MODEL ----------------------------------------------------------------------------
def test_env_var_overrides_the_default_folder(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFEXPLAIN_MODEL", str(model_dir))
    explainer = load_default(progress=False)
    assert explainer.model_name == "small-0"
    assert tuple(explainer.unet.config.block_out_channels) == UNET_BLOCKS
    saved = load_model_parts(model_dir)["vae"].state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in explainer.vae.state_dict().items())


def test_empty_env_var_means_the_embedded_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFEXPLAIN_MODEL", "")
    explainer = load_default(progress=False)
    info = json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())
    assert list(explainer.unet.config.block_out_channels) == info["unet_config"]["block_out_channels"]
    assert explainer.model_name == info["name"]


def test_bad_env_var_folder_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFEXPLAIN_MODEL", str(tmp_path / "gone"))
    with pytest.raises(ModelFolderError, match=r"DIFFEXPLAIN_MODEL=.*gone.*model\.json"):
        load_default(progress=False)


# ---- traces record which weights made them --------------------------------------------------------
def test_traces_record_the_model_fingerprint(model_dir: Path, tmp_path: Path) -> None:
    explainer = load_model(model_dir, progress=False)
    trace = explainer.run(PROMPT, num_inference_steps=2, seed=0)
    fingerprint = trace.fingerprint()  # hashed when asked (or on save), not during the run
    assert fingerprint == weight_fingerprint(explainer.unet)
    # the same weights loaded again (a new module) hash the same; other weights do not
    assert weight_fingerprint(load_model_parts(model_dir)["unet"]) == fingerprint
    write_small_model(tmp_path / "other", seed=1)
    other = load_model(tmp_path / "other", progress=False)
    other_trace = other.run(PROMPT, num_inference_steps=2, seed=0)
    assert other_trace.fingerprint() != fingerprint
    # and the fingerprint survives a trace file
    trace.save(tmp_path / "trace.safetensors")
    loaded = Trace.load(tmp_path / "trace.safetensors")
    assert loaded.settings["model"]["fingerprint"] == fingerprint
    assert trace_fingerprint(loaded) == fingerprint[:10]
