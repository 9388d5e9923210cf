"""``load_default()`` and ``load_flow_default()``: the embedded models, offline, as Explainers.

The default model predicts the noise ε; the flow model is the same U-Net, VAE and text encoder trained on
to predict the flow velocity v = ε − x0 (docs/model-card.md#the-flow-model). Both run through a plain
``StableDiffusionPipeline``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffexplain.data.vocab import caption_words
from diffexplain.errors import ModelFolderError
from diffexplain.models.store import SHIPPED_MODELS, load_model_parts, read_model_json
from diffexplain.models.text import load_text_encoder

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer

DEFAULT_MODEL_DIR = SHIPPED_MODELS["default"]
FLOW_MODEL_DIR = SHIPPED_MODELS["flow"]


def model_folder(source: str | Path) -> Path:
    """The folder ``source`` names: "default" and "flow" are the shipped models, anything else a path."""
    return SHIPPED_MODELS.get(str(source), Path(source))


def default_model_info() -> dict[str, Any]:
    """The shipped model's description: configs, training recipe and measured figures."""
    return read_model_json(DEFAULT_MODEL_DIR)


def load_model(
    folder: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> Explainer:
    """An :class:`~diffexplain.Explainer` over a model folder written by ``diffexplain train``."""
    from diffexplain.explainer import Explainer

    parts = load_model_parts(folder, device=device, dtype=dtype)
    tokenizer, text_encoder = load_text_encoder(device)
    explainer = Explainer(
        unet=parts["unet"],
        scheduler=parts["scheduler"],
        tokenizer=tokenizer,
        text_encoder=text_encoder.to(dtype=dtype),
        vae=parts["vae"],
        progress=progress,
    )
    meta = parts["meta"]
    explainer.model_name = str(meta.get("name", Path(folder).name))
    explainer.latent_rgb = meta.get("latent_rgb")
    explainer.defaults = dict(meta.get("defaults", {}))
    explainer.vocabulary = caption_words()  # trained on the shapes dataset's captions: warn on other words
    return explainer


def load_default(
    *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, progress: bool = True
) -> Explainer:
    """The embedded default model (64×64 coloured shapes), loaded offline in a few seconds.

    It knows only its dataset's words: six colours (red, orange, yellow, green, blue, purple), three
    shapes (circle, square, triangle), five positions (left, right, top, bottom, centre), two sizes
    (small, large) and light or dark backgrounds, e.g. "a red circle on the left and a blue square on the right".

    Set the environment variable ``DIFFEXPLAIN_MODEL`` to a folder written by ``diffexplain train`` to
    use that model instead (a classroom model, say) wherever the default one is loaded.
    """
    override = os.environ.get("DIFFEXPLAIN_MODEL")
    if override:
        try:
            return load_model(override, device=device, dtype=dtype, progress=progress)
        except ModelFolderError as err:  # say where the folder came from: the variable may be long forgotten
            raise ModelFolderError(f"the environment variable DIFFEXPLAIN_MODEL={override!r}: {err}") from err
    if not (DEFAULT_MODEL_DIR / "model.json").is_file():
        raise FileNotFoundError(
            f"the default model's files are missing from {DEFAULT_MODEL_DIR}; reinstall diffexplain "
            "or train one with `diffexplain train` and use diffexplain.load_model(folder)"
        )
    return load_model(DEFAULT_MODEL_DIR, device=device, dtype=dtype, progress=progress)


def flow_model_info() -> dict[str, Any]:
    """The shipped flow model's description: configs, training recipe and measured figures."""
    return read_model_json(FLOW_MODEL_DIR)


def load_flow_default(
    *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, progress: bool = True
) -> Explainer:
    """The embedded flow-matching model: the default model's parts, trained to predict a velocity.

    It draws what the default model draws (the same 64×64 coloured shapes and words), in the other
    dialect of diffusion: the U-Net predicts v = ε − x0 on the straight path x_t = (1 − σ)·x0 + σ·ε, so
    x̂0 = x_t − σ·v, and the sampler (flow-sigma Euler, ``scheduler_names``: ``flow_euler``,
    ``dpm++2m``, ``unipc``) moves x_t along v. Run the same prompt and seed through
    :func:`load_default` beside it to compare the dialects (``diffexplain.widgets.TwoDialects``).
    """
    if not (FLOW_MODEL_DIR / "model.json").is_file():
        raise FileNotFoundError(
            f"the flow model's files are missing from {FLOW_MODEL_DIR}; reinstall diffexplain, or train one "
            "with `diffexplain train --preset flow-classroom` and use diffexplain.load_model(folder)"
        )
    return load_model(FLOW_MODEL_DIR, device=device, dtype=dtype, progress=progress)
