"""The embedded pixel cascade: Imagen's recipe at toy scale, in DeepFloyd IF's format, offline on a CPU.

Stage I draws 16×16 pixels from MiniLM's token states; stage II draws 64×64 pixels beside stage I's
picture upscaled and noised. Both are ``UNet2DConditionModel``s with ε and a learned variance out, run by
DDPM with IF's settings, so they load into diffusers' own ``IFPipeline`` and ``IFSuperResolutionPipeline``
(:func:`pixel_cascade_pipelines`) and into diffexplain's IF families as a :class:`~diffexplain.Cascade`
(:func:`load_pixel_cascade`): the code path that runs real IF weights.

A model folder holds ``model.json`` (the U-Net configs, schedulers, run defaults, recipe and measured
figures) and one fp16 safetensors file per stage (``stage_I.safetensors``, ``stage_II.safetensors``).
The text encoder is the default model's MiniLM, shipped in its own package, at IF's 77 token positions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffexplain.errors import ModelFolderError

if TYPE_CHECKING:
    from diffusers import IFPipeline, IFSuperResolutionPipeline

    from diffexplain.cascade import Cascade

PIXEL_CASCADE_DIR = Path(__file__).parent / "pixel_cascade"
CASCADE_FORMAT = "diffexplain-cascade"
STAGE_NAMES = ("I", "II")


def cascade_folder(source: str | Path) -> Path:
    """The folder ``source`` names: "default" is the shipped cascade, anything else a path."""
    return PIXEL_CASCADE_DIR if str(source) == "default" else Path(source)


def read_cascade_json(folder: str | Path) -> dict[str, Any]:
    """A cascade folder's ``model.json``, checked (a clear error names what is missing)."""
    folder = cascade_folder(folder)
    path = folder / "model.json"
    if not path.is_file():
        raise ModelFolderError(
            f"{folder}: no model.json; expected a pixel-cascade folder (diffexplain train "
            "--preset pixel-cascade writes one)"
        )
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != CASCADE_FORMAT:
        raise ModelFolderError(
            f"{path}: format {meta.get('format')!r}; expected {CASCADE_FORMAT!r} (a pixel-cascade folder)"
        )
    for name in STAGE_NAMES:
        if name not in meta.get("stages", {}):
            raise ModelFolderError(f"{path}: no stage {name!r} under 'stages'")
        if not (folder / f"stage_{name}.safetensors").is_file():
            raise ModelFolderError(f"{folder}: stage_{name}.safetensors is missing")
    return meta


def pixel_cascade_info(folder: str | Path = "default") -> dict[str, Any]:
    """The cascade's description: configs, defaults, recipe and measured figures."""
    return read_cascade_json(folder)


def _scheduler(spec: dict[str, Any]) -> Any:
    import diffusers

    return getattr(diffusers, spec["class"]).from_config(spec["config"])


def pixel_cascade_pipelines(
    folder: str | Path = "default", *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[IFPipeline, IFSuperResolutionPipeline]:
    """diffusers' own ``IFPipeline`` and ``IFSuperResolutionPipeline`` over the cascade's parts.

    Call them as IF's: ``stage_1(prompt, clean_caption=False, output_type="pt")``, then
    ``stage_2(image=..., prompt=..., clean_caption=False)`` (caption cleaning needs bs4 and ftfy, and the
    shapes captions need none). No safety checker or watermarker: these are toy pictures of shapes."""
    from diffusers import IFPipeline, IFSuperResolutionPipeline, UNet2DConditionModel
    from safetensors.torch import load_file

    from diffexplain.families.deepfloyd_if import IF_MAX_LENGTH
    from diffexplain.models.text import load_text_encoder

    folder = cascade_folder(folder)
    meta = read_cascade_json(folder)
    tokenizer, text_encoder = load_text_encoder(device)
    tokenizer.model_max_length = int(meta.get("text_max_length", IF_MAX_LENGTH))
    unets = {}
    for name in STAGE_NAMES:
        unet = UNet2DConditionModel(**meta["stages"][name]["unet_config"])
        unet.load_state_dict(load_file(str(folder / f"stage_{name}.safetensors")))
        unet.to(device)
        if dtype != torch.float32:  # the weights load into float32 parameters
            unet.to(dtype=dtype)
        unets[name] = unet.eval()
    none = dict(safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    text = dict(
        tokenizer=tokenizer,
        text_encoder=text_encoder if dtype == torch.float32 else text_encoder.to(dtype=dtype),
    )
    stage_1 = IFPipeline(
        unet=unets["I"], scheduler=_scheduler(meta["stages"]["I"]["scheduler"]), **text, **none
    )
    stage_2 = IFSuperResolutionPipeline(
        unet=unets["II"],
        scheduler=_scheduler(meta["stages"]["II"]["scheduler"]),
        image_noising_scheduler=_scheduler(meta["stages"]["II"]["image_noising_scheduler"]),
        **text,
        **none,
    )
    for pipe in (stage_1, stage_2):
        pipe.set_progress_bar_config(disable=True)
    return stage_1, stage_2


def load_pixel_cascade(
    folder: str | Path = "default",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> Cascade:
    """The embedded pixel cascade as a :class:`~diffexplain.Cascade` (stages ``"I"`` and ``"II"``), offline.

    ``cascade.run("a red circle on the left", seed=0)`` runs both stages with the folder's defaults;
    each stage's ``Explainer`` carries them in ``.defaults``."""
    from diffexplain.cascade import Cascade
    from diffexplain.data.vocab import caption_words

    meta = read_cascade_json(folder)
    cascade = Cascade.from_pipelines(
        *pixel_cascade_pipelines(folder, device=device, dtype=dtype), progress=progress
    )
    for name, explainer in cascade.stages.items():
        explainer.defaults = dict(meta["stages"][name].get("defaults", {}))
        explainer.model_name = f"{meta.get('name', 'pixel-cascade')} stage {name}"
        explainer.vocabulary = caption_words()  # trained on the shapes captions: warn on other words
        explainer.progress = progress
    return cascade
