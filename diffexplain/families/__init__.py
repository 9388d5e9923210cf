"""Pipeline families: one adapter each, picked from the pipeline's class (see ``families.base``), or
from the parts' names and kinds (``families.parts``).

Adding a family is an addition: its adapter module (the contract: ``Family``'s docstring), its entry in
``FAMILIES``, its tests and its docs page; nothing in the loop changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from diffexplain.families.base import Conditioning, Family, conditioning_point
from diffexplain.families.chroma import Chroma
from diffexplain.families.deepfloyd_if import IF, IFSuperResolution
from diffexplain.families.flux import Flux
from diffexplain.families.flux2 import Flux2Dev, Flux2Klein
from diffexplain.families.flux3 import Flux3
from diffexplain.families.flux3_distilled import Flux3Distilled
from diffexplain.families.kandinsky import KandinskyDecoder, KandinskyPrior
from diffexplain.families.modular import is_modular, modular_entry, modular_parts, supported_modular_pipelines
from diffexplain.families.parts import AmbiguousPartsError, PartKind, pick_family
from diffexplain.families.qwen_image import QwenImage
from diffexplain.families.sana import Sana
from diffexplain.families.sana_sprint import SanaSprint
from diffexplain.families.sd import StableDiffusion
from diffexplain.families.sd3 import StableDiffusion3
from diffexplain.families.sdxl import StableDiffusionXL
from diffexplain.families.vae import VaeAdapter
from diffexplain.families.z_image import ZImage
from diffexplain.names import all_hook_names

FAMILIES: dict[str, type[Family]] = {
    f.name: f
    for f in (
        StableDiffusion,
        StableDiffusionXL,
        StableDiffusion3,
        Flux,
        Flux2Klein,
        Flux2Dev,
        Chroma,
        IF,
        IFSuperResolution,
        KandinskyPrior,
        KandinskyDecoder,
        ZImage,
        QwenImage,
        Sana,
        SanaSprint,
        Flux3,
        Flux3Distilled,
    )
}
"""Every supported family by short name."""

ALL_HOOK_NAMES: tuple[str, ...] = all_hook_names()
"""The loop's hook names and every family's own (what a ``Hook`` may name before it meets a model)."""


def family_from_parts(parts: Mapping[str, Any], families: Iterable[type[Family]] | None = None) -> Family:
    """The one family (of ``families``, by default every one in ``FAMILIES``) that the parts fit, built
    over them: by the parts' names (``vae`` optional), then by their declared ``part_kinds``.

    ``TypeError`` naming what each family expects if none fits; ``AmbiguousPartsError`` (a ``TypeError``)
    naming the candidates, and how to pick one, if several do.
    """
    return pick_family(parts, FAMILIES.values() if families is None else families)


def supported_pipelines() -> str:
    """ "StableDiffusionPipeline or LatentConsistencyModelPipeline (Stable Diffusion 1.x / 2.x), ...", for
    error messages and docs (the modular pipelines: ``modular.supported_modular_pipelines``)."""
    return ", ".join(f"{' or '.join(f.pipeline_classes())} ({f.label})" for f in FAMILIES.values())


def family_for_pipeline(pipe: Any) -> type[Family]:
    """The family of a diffusers pipeline, by its class (or a base class) among each family's
    ``pipeline_classes()``, or of a Modular Diffusers pipeline, by its blocks (``families.modular``);
    ``ValueError`` naming the supported ones."""
    if is_modular(pipe):
        return FAMILIES[modular_entry(pipe).family]
    for cls in type(pipe).__mro__:
        for family in FAMILIES.values():
            if cls.__name__ in family.pipeline_classes():
                return family
    raise ValueError(
        f"{type(pipe).__name__} is not supported by diffexplain; supported pipelines: {supported_pipelines()}; "
        f"modular pipelines: {supported_modular_pipelines()}"
    )


def family_for_class_name(name: str) -> type[Family] | None:
    """The family that mirrors the diffusers pipeline class called ``name`` (a ``model_index.json``'s
    ``_class_name``), or None."""
    return next((f for f in FAMILIES.values() if name in f.pipeline_classes()), None)


def family_from_pipeline(pipe: Any) -> Family:
    """The adapter over a pipeline's own parts (shared, not copied). A modular pipeline's components go to
    its family; a family with a classic pipeline too (SDXL) builds that one over them for its reference."""
    family = family_for_pipeline(pipe)
    if is_modular(pipe):
        parts = modular_parts(pipe, family)
        if (
            family.pipeline_class == modular_entry(pipe).pipeline_class
        ):  # the family reads the modular pipeline
            return family(**parts, pipeline=pipe)
        return family(**parts, scheduler=pipe.scheduler)
    parts = {name: getattr(pipe, name, None) for name in family.part_names}
    extra = {} if family is StableDiffusion else {"pipeline": pipe}
    return family(**parts, **extra)


__all__ = [
    "ALL_HOOK_NAMES",
    "FAMILIES",
    "AmbiguousPartsError",
    "Chroma",
    "Conditioning",
    "Family",
    "Flux",
    "Flux2Dev",
    "Flux2Klein",
    "Flux3",
    "Flux3Distilled",
    "IF",
    "IFSuperResolution",
    "KandinskyDecoder",
    "KandinskyPrior",
    "PartKind",
    "QwenImage",
    "Sana",
    "SanaSprint",
    "StableDiffusion",
    "StableDiffusion3",
    "StableDiffusionXL",
    "VaeAdapter",
    "ZImage",
    "conditioning_point",
    "family_for_class_name",
    "family_for_pipeline",
    "family_from_parts",
    "family_from_pipeline",
    "supported_pipelines",
]
