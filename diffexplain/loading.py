"""Loading a diffusers pipeline for ``Explainer.from_pretrained``: a classic pipeline by the class its
``model_index.json`` names (a folder or a Hub id, located by ``diffexplain.models.hub``), or a Modular
Diffusers pipeline from a folder its ``save_pretrained`` wrote (``modular_model_index.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffexplain.families import family_for_class_name, supported_pipelines
from diffexplain.families.modular import is_modular_folder, load_modular


def load_pipeline(path: str | Path, **kwargs: Any) -> Any:
    """The pipeline at ``path``; ``kwargs`` go to its ``from_pretrained`` (e.g. ``torch_dtype=``), or to a
    modular pipeline's ``load_components``.

    A missing folder is ``FileNotFoundError``; a hub id neither cached nor reachable is
    ``HubUnreachableError``; a pipeline class no family mirrors is ``ValueError`` naming the supported ones.
    SD's and LCM's safety checker is left out (diffexplain decodes latents itself)."""
    import diffusers

    from diffexplain.models.hub import locate_pipeline

    if is_modular_folder(path):
        return load_modular(path, **kwargs)
    source = locate_pipeline(path, **kwargs)
    if source.local_files_only:
        kwargs["local_files_only"] = True
    path, config = source.path, source.config
    name = config.get("_class_name", "")
    if family_for_class_name(name) is None:
        raise ValueError(
            f"{path}: {name or 'this pipeline'} is not supported; supported: {supported_pipelines()}"
        )
    if name in ("StableDiffusionPipeline", "LatentConsistencyModelPipeline"):
        kwargs.setdefault("safety_checker", None)
        kwargs.setdefault("requires_safety_checker", False)
    return getattr(diffusers, name).from_pretrained(path, **kwargs)
