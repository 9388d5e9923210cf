"""Where ``Explainer.from_pretrained`` finds a pipeline: a local folder, the Hugging Face cache or the hub.

Decided here, before diffusers is asked, so that a mistake costs no waiting and is named for what it is:

- a path (it starts with ``.``, ``/`` or ``~``, or is not a hub id) that does not exist is "no such
  folder", not a network failure; a folder without ``model_index.json`` is not a pipeline folder;
- a hub id (``owner/name``) is looked up in the local cache first (``try_to_load_from_cache``); with
  ``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``) the cache is all there is;
- otherwise the hub is asked once, with a short timeout and no retries (``HfApi.model_info``): where
  it cannot be reached, a cached copy is loaded offline, and an id that is not cached fails at once with
  what to do (diffusers would retry for half a minute and then say the file does not exist).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffexplain.errors import HubUnreachableError

HUB_TIMEOUT_S = 5.0
"""How long the one question to the hub may take before it counts as unreachable (seconds)."""


@dataclass(frozen=True)
class PipelineSource:
    """What ``from_pretrained`` loads: a folder or a hub id, its ``model_index.json``, and whether to stay offline."""

    path: str  # a local folder, or a hub id
    config: dict[str, Any]  # the pipeline's model_index.json
    local_files_only: bool  # load from the cache without asking the hub (it cannot be reached)


def is_hub_id(source: str) -> bool:
    """Whether ``source`` is written as a Hugging Face hub id (``name`` or ``owner/name``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def looks_like_path(source: str) -> bool:
    """Whether ``source`` names a folder rather than a hub id: it starts with ``.``, ``/`` or ``~``, or holds a
    path separator and is not a hub id (``owner/name`` holds "/" too, so it counts as an id)."""
    if source.startswith((".", "/", "~")):
        return True
    separators = {os.sep, os.altsep or os.sep, "\\"}
    return any(sep in source for sep in separators) and not is_hub_id(source)


def _read_index(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _local_folder(source: str, folder: Path) -> PipelineSource:
    if not folder.is_dir():
        raise NotADirectoryError(f"{source!r} is a file; expected a folder holding a diffusers pipeline")
    index = folder / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(
            f"the folder {source!r} has no model_index.json, so it is not a diffusers pipeline folder "
            "(pipe.save_pretrained(folder) writes one)"
        )
    return PipelineSource(str(folder), _read_index(index), local_files_only=False)


def _cache_dir(kwargs: dict[str, Any]) -> str:
    from huggingface_hub import constants

    return str(kwargs.get("cache_dir") or constants.HF_HUB_CACHE)


def _ask_hub(repo_id: str, kwargs: dict[str, Any]) -> Exception | None:
    """None if the hub has ``repo_id``; ``FileNotFoundError`` if it has not; else why it could not be asked."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:  # one request, no retries: model_info does not back off
        HfApi().model_info(
            repo_id, revision=kwargs.get("revision"), token=kwargs.get("token"), timeout=HUB_TIMEOUT_S
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        return FileNotFoundError(
            f"the Hugging Face hub has no pipeline {repo_id!r}"
            f"{' at revision ' + repr(kwargs['revision']) if kwargs.get('revision') else ''} "
            f"(or it is private or gated: log in with `hf auth login` or pass token=...): {err}"
        )
    except Exception as err:  # noqa: BLE001 - any failure to get an answer means the hub is out of reach
        return err
    return None


def locate_pipeline(source: str | os.PathLike[str], **kwargs: Any) -> PipelineSource:
    """Where the pipeline ``source`` is, and its ``model_index.json``; an error at once where it is nowhere.

    ``kwargs`` are those of diffusers' ``from_pretrained``; ``cache_dir``, ``revision``, ``token`` and
    ``local_files_only`` are read. Raises ``FileNotFoundError`` for a missing folder (or one that is no
    pipeline) and for an id the hub does not have, ``HubUnreachableError`` for an id that is neither in
    the cache nor reachable.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    text = os.fspath(source)
    folder = Path(text).expanduser()
    if folder.exists():
        return _local_folder(text, folder)
    if looks_like_path(text) or not is_hub_id(text):
        raise FileNotFoundError(
            f"no such folder: {text!r} (that is {folder.resolve()}); expected a folder holding a diffusers "
            "pipeline (with its model_index.json), or a Hugging Face hub id such as 'owner/name'"
        )
    cached = try_to_load_from_cache(
        text, "model_index.json", cache_dir=kwargs.get("cache_dir"), revision=kwargs.get("revision")
    )
    cached_index = Path(cached) if isinstance(cached, str) else None
    offline_by = (
        "HF_HUB_OFFLINE is set"
        if constants.HF_HUB_OFFLINE
        else "local_files_only=True"
        if kwargs.get("local_files_only")
        else None
    )
    if offline_by is not None:
        if cached_index is None:
            raise FileNotFoundError(
                f"{text!r} is not in the local Hugging Face cache ({_cache_dir(kwargs)}), and {offline_by}, "
                "so it cannot be downloaded: download it once with the network on (unset HF_HUB_OFFLINE), "
                "or pass the path of a local folder holding the pipeline"
            )
        return PipelineSource(text, _read_index(cached_index), local_files_only=True)
    problem = _ask_hub(text, kwargs)
    if isinstance(problem, FileNotFoundError):
        raise problem
    if problem is not None:
        if cached_index is not None:  # the hub is out of reach, but a copy is here: load it offline
            return PipelineSource(text, _read_index(cached_index), local_files_only=True)
        raise HubUnreachableError(
            f"cannot load {text!r}: the Hugging Face hub ({constants.ENDPOINT}) is unreachable "
            f"({type(problem).__name__}: {problem}) and {text!r} is not in the local cache "
            f"({_cache_dir(kwargs)}). Pass the path of a local folder holding the pipeline "
            "(pipe.save_pretrained(folder) writes one), or download it where the network is on and run "
            f"with HF_HUB_OFFLINE=1 and that cache (no folder {text!r} is here either: a folder's path may "
            "start with ./)"
        ) from None
    if cached_index is not None:
        return PipelineSource(text, _read_index(cached_index), local_files_only=False)
    import diffusers

    config = diffusers.DiffusionPipeline.load_config(
        text, **{k: kwargs[k] for k in ("cache_dir", "revision", "token") if k in kwargs}
    )
    return PipelineSource(text, dict(config), local_files_only=False)
