"""``Explainer.from_pretrained`` decides where a pipeline is before diffusers is asked (issue #29, part 4):
a missing folder is "no such folder", a hub id with no network fails at once and says what to do, and a
cached id loads offline. No test here downloads anything: the hub is pointed at a closed local port."""

from __future__ import annotations

import huggingface_hub.constants as hub_constants
import pytest
import torch
from diffusers import StableDiffusionPipeline

from diffexplain import Explainer
from diffexplain.errors import HubUnreachableError
from diffexplain.models.hub import is_hub_id, looks_like_path
from tests.conftest import PROMPT

MISSING_ID = "nobody/no-such-model"  # never downloaded: no hub is reachable in these tests
CLOSED_PORT = "http://127.0.0.1:9"  # nothing listens there: a connection is refused at once


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """A user who did not set HF_HUB_OFFLINE, with an empty cache and a hub that cannot be reached."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)  # read once, when huggingface_hub loads
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hub_constants, "ENDPOINT", CLOSED_PORT)
    return tmp_path


def test_paths_and_hub_ids_are_told_apart():
    for path in ("./models/x", "/abs/missing", "~/models/x", "../x", "models/x/y", "a folder/x"):
        assert looks_like_path(path), path
    for repo_id in ("owner/name", "owner/name-2.0", "name"):
        assert is_hub_id(repo_id) and not looks_like_path(repo_id), repo_id


@pytest.mark.parametrize("relative", [True, False])
def test_a_missing_folder_is_no_such_folder_not_a_network_failure(no_network, monkeypatch, relative):
    monkeypatch.chdir(no_network)
    path = "./models/x" if relative else str(no_network / "abs" / "missing")
    with pytest.raises(FileNotFoundError, match="no such folder") as info:
        Explainer.from_pretrained(path)
    message = str(info.value)
    assert repr(path) in message and "hub is unreachable" not in message
    assert not isinstance(info.value, HubUnreachableError)


def test_a_folder_that_is_no_pipeline_says_so(no_network):
    (no_network / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no model_index.json"):
        Explainer.from_pretrained(no_network / "empty")


def test_a_hub_id_with_no_network_fails_at_once_naming_the_id_and_what_to_do(no_network):
    with pytest.raises(HubUnreachableError) as info:
        Explainer.from_pretrained(MISSING_ID)
    message = str(info.value)
    assert f"cannot load {MISSING_ID!r}" in message and "unreachable" in message
    assert "local folder" in message and "HF_HUB_OFFLINE=1" in message
    assert isinstance(info.value, ConnectionError)  # an OSError, as diffusers' own loading errors


def test_offline_mode_with_an_empty_cache_names_the_cache(no_network, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        FileNotFoundError, match=r"not in the local Hugging Face cache .*HF_HUB_OFFLINE is set"
    ):
        Explainer.from_pretrained(MISSING_ID)


def _fill_cache(cache, repo_id: str, parts: dict) -> None:
    """``repo_id`` in a Hugging Face cache folder, as a download leaves it: a snapshot and refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    pipe = StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_a_cached_hub_id_loads_when_the_hub_cannot_be_reached(no_network, parts, explainer):
    cache = no_network / "cache"
    _fill_cache(cache, "nobody/tiny-sd", parts)
    loaded = Explainer.from_pretrained("nobody/tiny-sd", cache_dir=str(cache)).set_scheduler("ddim")
    loaded.progress = False
    a = explainer.run(PROMPT, num_inference_steps=2, seed=0, decode=False)
    b = loaded.run(PROMPT, num_inference_steps=2, seed=0, decode=False)
    assert torch.equal(a.final_latents, b.final_latents)


def test_a_cascade_is_located_the_same_way(no_network, monkeypatch):
    from diffexplain import Cascade

    monkeypatch.chdir(no_network)
    with pytest.raises(FileNotFoundError, match="no such folder: './stage-one'"):
        Cascade.from_pretrained("./stage-one", "./stage-two")
    with pytest.raises(HubUnreachableError, match=f"cannot load {MISSING_ID!r}"):
        Cascade.from_pretrained(MISSING_ID, MISSING_ID)
