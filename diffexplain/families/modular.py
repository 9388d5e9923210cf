"""Modular Diffusers pipelines (``diffusers.ModularPipeline``) as a source of families.

A modular pipeline is a stack of blocks over named components. diffexplain recognises one by its
blocks' ``model_name`` (e.g. ``"flux3"``), then its blocks' class, then the pipeline's class or its
``default_blocks_name``, and builds the family adapter over the pipeline's components, shared, not
copied. What it takes from the pipeline beyond the parts:

- the **guider** component (``ClassifierFreeGuidance``, APG, PAG ...): the Explainer's default guidance
  method (``explainer.defaults["guider"]``, with its ``guidance_scale`` as the default w), so a run
  calls the model once per branch with the guider's formula, as the modular denoise block does, and
  equals the modular pipeline bit for bit;
- the family reads its **blocks' settings** where it has them (FLUX.3: the text window's padding
  multiple, the RoPE scale, the default size) and calls the blocks' own functions for what happens
  before the loop (FLUX.3's Qwen3-VL text encoding, its position ids, its σ schedule).

The denoising loop itself is diffexplain's (``diffexplain.loop``): the modular denoise block is what the
tests compare it with. Blocks that rewrite the prompt (FLUX.3's ``prompt_upsampler``, an LLM) are not
run: the prompt is encoded as given, and ``from_pipeline`` says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffexplain.errors import user_stacklevel


@dataclass(frozen=True)
class ModularEntry:
    """One modular pipeline diffexplain reads, and the family it maps to."""

    model_name: str  # the blocks' ``model_name``
    pipeline_class: str  # the ModularPipeline subclass
    blocks_class: str  # its ``default_blocks_name``
    family: str  # the key in ``FAMILIES``


MODULAR_PIPELINES: tuple[ModularEntry, ...] = (
    ModularEntry("flux3", "Flux3ModularPipeline", "Flux3AutoBlocks", "flux3"),
    ModularEntry(
        "flux3-distilled", "Flux3DistilledModularPipeline", "Flux3DistilledAutoBlocks", "flux3-distilled"
    ),
    ModularEntry(
        "stable-diffusion-xl", "StableDiffusionXLModularPipeline", "StableDiffusionXLAutoBlocks", "sdxl"
    ),
)
"""Every modular pipeline diffexplain supports."""

SKIPPED_BLOCKS = ("prompt_upsampler",)
"""Top-level blocks that diffexplain does not run (they rewrite the prompt before it is encoded)."""


def is_modular(pipe: Any) -> bool:
    """Whether ``pipe`` is a Modular Diffusers pipeline (by its class's ancestry, without importing them)."""
    return any(
        c.__name__ == "ModularPipeline" and c.__module__.startswith("diffusers.") for c in type(pipe).__mro__
    )


def supported_modular_pipelines() -> str:
    """ "Flux3ModularPipeline (blocks Flux3AutoBlocks, model flux3), ...", for error messages and docs."""
    return ", ".join(
        f"{e.pipeline_class} (blocks {e.blocks_class}, model {e.model_name!r})" for e in MODULAR_PIPELINES
    )


def pipeline_blocks(pipe: Any) -> Any:
    """The blocks a modular pipeline runs: ``pipe._blocks`` itself (``pipe.blocks`` is a deep copy)."""
    blocks = getattr(pipe, "_blocks", None)
    return blocks if blocks is not None else getattr(pipe, "blocks", None)


def modular_entry(pipe: Any) -> ModularEntry:
    """The entry of a modular pipeline: by its blocks' ``model_name``, its blocks' class, then its own
    class (or a base) and ``default_blocks_name``; ``ValueError`` naming the supported ones."""
    blocks = pipeline_blocks(pipe)
    model_name = getattr(blocks, "model_name", None)
    blocks_class = type(blocks).__name__ if blocks is not None else None
    classes = [c.__name__ for c in type(pipe).__mro__]
    default_blocks = getattr(pipe, "default_blocks_name", None)
    for matches in (
        lambda e: e.model_name == model_name,
        lambda e: e.blocks_class == blocks_class,
        lambda e: e.pipeline_class == classes[0] or e.blocks_class == default_blocks,
        lambda e: e.pipeline_class in classes,
    ):
        for entry in MODULAR_PIPELINES:
            if matches(entry):
                return entry
    raise ValueError(
        f"{type(pipe).__name__} (blocks {blocks_class}, model {model_name!r}) is a Modular Diffusers pipeline "
        f"that diffexplain does not read; supported modular pipelines: {supported_modular_pipelines()}"
    )


def modular_parts(pipe: Any, family: type) -> dict[str, Any]:
    """The family's parts from the pipeline's components; ``ValueError`` naming those not loaded."""
    parts = {name: getattr(pipe, name, None) for name in family.part_names}
    missing = [n for n, part in parts.items() if part is None and n != "vae"]
    if missing or getattr(pipe, "scheduler", None) is None:
        missing += [] if getattr(pipe, "scheduler", None) is not None else ["scheduler"]
        raise ValueError(
            f"{type(pipe).__name__}: the components {', '.join(missing)} are not loaded; load them first "
            "(pipe.load_components(), or pipe.update_components(name=module))"
        )
    return parts


def modular_defaults(pipe: Any) -> dict[str, Any]:
    """The Explainer's defaults from the pipeline: its guider (the guidance method of every run) and the
    guider's scale as the default w; warns where a block diffexplain does not run is in the pipeline."""
    defaults: dict[str, Any] = {}
    guider = getattr(pipe, "guider", None)
    if guider is not None:
        defaults["guider"] = guider
        # the guider's own scale (a disabled guider: one branch, w = 1)
        defaults["guidance_scale"] = (
            float(guider.guidance_scale) if getattr(guider, "_enabled", True) else 1.0
        )
    blocks = getattr(pipeline_blocks(pipe), "sub_blocks", {}) or {}
    skipped = [name for name in SKIPPED_BLOCKS if name in blocks]
    if skipped:
        warnings.warn(
            f"{type(pipe).__name__}: diffexplain encodes the prompt as given; the pipeline's "
            f"{', '.join(skipped)} step (an LLM rewriting the prompt) is not run. To compare with the pipeline, "
            f"pop it there too (pipe.blocks.sub_blocks.pop({skipped[0]!r}), then blocks.init_pipeline()), or "
            "pass diffexplain the upsampled prompt",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return defaults


def is_modular_folder(path: Any) -> bool:
    """Whether ``path`` is a local folder a modular pipeline saved (``modular_model_index.json``)."""
    return isinstance(path, str | Path) and (Path(path) / "modular_model_index.json").is_file()


def load_modular(path: str | Path, **kwargs: Any) -> Any:
    """The modular pipeline saved in the folder ``path`` (its class from ``modular_model_index.json``), with
    its components loaded (``load_components(**kwargs)``, e.g. ``torch_dtype=torch.bfloat16``)."""
    from diffusers.modular_pipelines import ModularPipeline

    pipe = ModularPipeline.from_pretrained(str(path))
    modular_entry(pipe)  # ValueError for a modular pipeline diffexplain does not read, before loading weights
    pipe.load_components(**kwargs)
    return pipe
