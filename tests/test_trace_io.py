"""Trace files: round trip, and hostile or broken files raise TraceFileError without executing anything."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from diffexplain import Trace, TraceFileError
from tests.conftest import PROMPT


@pytest.fixture(scope="module")
def saved(parts, tmp_path_factory):
    from diffexplain import Explainer

    ex = Explainer(**parts, progress=False).set_scheduler("unipc")
    trace = ex.run(PROMPT, num_inference_steps=3, seed=2, hooks={"step.latents": lambda x, *, ctx: x * 1.0})
    path = tmp_path_factory.mktemp("io") / "trace.safetensors"
    trace.save(path)
    return trace, path


def test_round_trip(saved):
    trace, path = saved
    loaded = Trace.load(path)
    assert loaded.settings == trace.settings
    assert loaded.replacements == trace.replacements and loaded.kept == trace.kept
    assert (loaded.status, loaded.forked_from, len(loaded)) == ("complete", None, len(trace))
    for name, x in trace.run_tensors.items():
        assert torch.equal(loaded[name], x)
    for i, record in enumerate(trace.steps):
        assert loaded.steps[i].level == record.level and loaded.steps[i].timestep == record.timestep
        for name in record.tensors:
            assert torch.equal(loaded[name, i], trace[name, i])
        assert torch.equal(loaded.steps[i].restart.generator_state, record.restart.generator_state)
    assert torch.equal(loaded.final_latents, trace.final_latents)
    # one stored copy per tensor object: scheduler tables shared across steps are written once
    assert (
        loaded.steps[1].restart.scheduler_state["alphas_cumprod"]
        is (loaded.steps[2].restart.scheduler_state["alphas_cumprod"])
    )
    assert torch.equal(loaded["step.latents", 1], loaded["step.next", 0])
    assert loaded.reguide(1, 2.0).pred_x0.shape == (1, 4, 8, 8)


def rewrite(path, out, edit):
    """Copy a trace file with its JSON metadata edited by ``edit(doc)``."""
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
        doc = json.loads(f.metadata()["diffexplain"])
    edit(doc)
    save_file(tensors, str(out), metadata={"diffexplain": json.dumps(doc)})
    return out


def set_scheduler_class(name):
    return lambda doc: doc["settings"]["scheduler"].__setitem__("class", name)


HOSTILE_EDITS = {
    "os.system as scheduler": (set_scheduler_class("os.system"), "not allowed"),
    "arbitrary class": (set_scheduler_class("evil_module_xyz.Payload"), "not allowed"),
    "wrong version": (lambda doc: doc.__setitem__("version", 99), "version 99 is not supported"),
    "wrong format": (lambda doc: doc.__setitem__("format", "pickle"), "format is 'pickle'"),
    "missing key": (lambda doc: doc.pop("steps"), "missing key 'steps'"),
    "huge config": (
        lambda doc: doc["settings"]["scheduler"]["config"].__setitem__("num_train_timesteps", 10**15),
        "absurdly large",
    ),
    "bad tensor ref": (
        lambda doc: doc["steps"][0]["tensors"].__setitem__("step.latents", "t9999"),
        "does not hold",
    ),
    "unknown name": (lambda doc: doc["steps"][0]["tensors"].__setitem__("__import__", "t0"), "unknown name"),
    "dunder attribute": (
        lambda doc: doc["steps"][0]["restart"]["scheduler_state"].__setitem__("__class__", 1),
        "forbidden attribute",
    ),
    "bad store dtype": (lambda doc: doc.__setitem__("store_dtype", "os.system"), "store_dtype"),
    "bad generator device": (
        lambda doc: doc["settings"].__setitem__("generator_device", "evil"),
        "generator_device",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_EDITS))
def test_hostile_json_is_refused_and_nothing_runs(saved, tmp_path, monkeypatch, case):
    _, path = saved
    edit, match = HOSTILE_EDITS[case]
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    bad = rewrite(path, tmp_path / "bad.safetensors", edit)
    with pytest.raises(TraceFileError, match=match) as info:
        Trace.load(bad)
    assert str(bad) in str(info.value) and isinstance(info.value, ValueError)
    assert calls == [] and "evil_module_xyz" not in sys.modules


def test_broken_files(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "tiny": data[:5],
        "empty": b"",
        "random": os.urandom(4096),
        "huge header": (2**62).to_bytes(8, "little") + b"{}",
        "bad json header": (20).to_bytes(8, "little") + b"{not json at all!!!}",
    }
    for name, content in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(content)
        with pytest.raises(TraceFileError, match="cannot load trace file"):
            Trace.load(bad)
    with pytest.raises(TraceFileError, match="cannot read the file"):
        Trace.load(tmp_path / "missing.safetensors")


def test_huge_declared_tensor_and_plain_safetensors(tmp_path):
    header = json.dumps({"t0": {"dtype": "F32", "shape": [10**12], "data_offsets": [0, 4 * 10**12]}}).encode()
    bad = tmp_path / "huge.safetensors"
    bad.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    with pytest.raises(TraceFileError):
        Trace.load(bad)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(TraceFileError, match="not a trace"):
        Trace.load(plain)
    bad_json = tmp_path / "badjson.safetensors"
    save_file({"x": torch.zeros(2)}, str(bad_json), metadata={"diffexplain": "{[" * 50000})
    with pytest.raises(TraceFileError, match="not valid JSON"):
        Trace.load(bad_json)


def test_save_is_shareable_and_leaves_no_temporary_file(saved, tmp_path):
    trace, _ = saved
    fresh = tmp_path / "fresh.txt"
    fresh.touch()
    path = tmp_path / "class.trace.safetensors"
    path.write_text("an older trace")  # replaced whole, never half-written
    trace.save(path)
    assert path.stat().st_mode & 0o777 == fresh.stat().st_mode & 0o777  # not safetensors' 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class.trace.safetensors", "fresh.txt"]
    assert Trace.load(path).settings == trace.settings
