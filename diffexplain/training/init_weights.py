"""Pin the model folders a run starts from, so that a resume cannot silently mix two models.

``vae_init`` and ``unet_init`` may name a model folder, and "default" names whatever model the
installed package ships. A run resumed after an upgrade (or after someone re-exported that folder)
would then pair a U-Net trained on one VAE's latents with another VAE. The config cannot see that,
since it still says "default", so the run folder records the weights' SHA-256 when it starts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from diffexplain.errors import TrainConfigError
from diffexplain.models.config import TrainConfig
from diffexplain.models.default import model_folder
from diffexplain.models.store import is_model_folder

INIT_WEIGHTS_FILE = "init_weights.json"
_WEIGHTS = ("unet.safetensors", "vae.safetensors")


def init_weights(cfg: TrainConfig) -> dict[str, dict[str, str]]:
    """``{field: {weights file: sha256}}`` for each of ``vae_init``/``unet_init`` that names a model folder."""
    pinned: dict[str, dict[str, str]] = {}
    for field in ("vae_init", "unet_init"):
        source = getattr(cfg, field)
        if source and is_model_folder(source):
            folder = model_folder(source)
            pinned[field] = {name: _sha256(folder / name) for name in _WEIGHTS if (folder / name).is_file()}
    return pinned


def check_init_weights(out: Path, cfg: TrainConfig, now: dict[str, dict[str, str]]) -> None:
    """Refuse to go on with ``out`` if the weights it recorded at its start differ from ``now``.

    ``now`` is :func:`init_weights` of ``cfg``. Run folders without a record (new ones, or written before
    this file existed) pass.
    """
    record = out / INIT_WEIGHTS_FILE
    if not record.is_file():
        return
    then = json.loads(record.read_text())
    changed = [
        f"{field}={getattr(cfg, field)!r} ({name})"
        for field, files in then.items()
        for name, digest in files.items()
        if now.get(field, {}).get(name) != digest
    ]
    if changed:
        raise TrainConfigError(
            f"{out} started from other weights than the model folder now holds: {', '.join(changed)} "
            "changed since (an upgrade or a re-export?). Resuming would mix two models; train into a new "
            "--out folder, or put the original model folder back"
        )


def pin_init_weights(out: Path, now: dict[str, dict[str, str]]) -> None:
    """Record ``now`` (:func:`init_weights`) in ``out`` unless a record is there already."""
    record = out / INIT_WEIGHTS_FILE
    if not record.is_file():
        record.write_text(json.dumps(now, indent=1))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
