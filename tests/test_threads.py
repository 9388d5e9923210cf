"""CPU threads: one count per explainer, recorded in the trace, reused by its forks; the knob."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffexplain import Explainer, threads
from tests.conftest import PROMPT

ROOT = Path(__file__).resolve().parents[1]


def threads_seen(explainer: Explainer, **kwargs) -> tuple[list[int], object]:
    seen: list[int] = []
    hook = {"step.next": lambda x, *, ctx: seen.append(torch.get_num_threads())}
    trace = explainer.run(PROMPT, num_inference_steps=2, seed=0, hooks=hook, **kwargs)
    return seen, trace


def test_auto_uses_no_more_threads_than_free_cores(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (6.4, 0.0, 0.0))  # six of eight cores busy
    assert threads.free_cores() == 2 and threads.decide_threads() == min(torch.get_num_threads(), 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (20.0, 0.0, 0.0))
    assert threads.free_cores() == 1  # never fewer than one


def test_the_knob(monkeypatch):
    monkeypatch.setenv(threads.ENV, "torch")
    assert threads.decide_threads() == torch.get_num_threads()
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.decide_threads() == 3
    for bad in ("0", "many"):
        monkeypatch.setenv(threads.ENV, bad)
        with pytest.raises(ValueError, match="expected 'auto', 'torch' or a whole number"):
            threads.decide_threads()


def test_the_count_is_decided_once_per_explainer_and_recorded(explainer, monkeypatch):
    before = torch.get_num_threads()
    first = 1 if before > 1 else 2
    monkeypatch.setenv(threads.ENV, str(first))
    seen, trace = threads_seen(explainer)
    assert seen == [first, first] and torch.get_num_threads() == before  # given back after the run
    assert trace.settings["threads"] == explainer.threads == first
    monkeypatch.setenv(threads.ENV, str(first + 1))  # the load (or the knob) changed: the count does not
    seen, again = threads_seen(explainer)
    assert seen == [first, first] and torch.equal(again.final_latents, trace.final_latents)


def test_a_fork_runs_on_its_traces_count(explainer):
    explainer.threads = 2
    seen, trace = threads_seen(explainer)
    explainer.threads = 1  # as if the explainer had decided otherwise since
    forked: list[int] = []
    hook = {"step.next": lambda x, *, ctx: forked.append(torch.get_num_threads())}
    fork = explainer.fork(trace, 1, hooks=hook)
    assert seen == [2, 2] and forked == [2] and fork.settings["threads"] == 2
    assert torch.equal(fork.final_latents, trace.final_latents)
    assert threads_seen(explainer)[0] == [1, 1]  # a new run takes the explainer's count


def test_explicit_counts_are_checked(explainer):
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="Explainer.threads = .*whole number of threads ≥ 1"):
            explainer.threads = bad


def test_a_fork_of_a_trace_of_other_weights_is_refused_unless_asked(parts, explainer):
    trace = explainer.run(PROMPT, num_inference_steps=2, seed=0, decode=False)
    unet = type(parts["unet"]).from_config(parts["unet"].config)  # same shape, other (random) weights
    other = Explainer(**{**parts, "unet": unet}, progress=False).set_scheduler("ddim")
    theirs = trace.fingerprint()
    with pytest.raises(
        ValueError, match=f"other weights \\(fingerprint {theirs}\\).*fingerprint [0-9a-f]+"
    ) as err:
        other.fork(trace, 1)
    assert "other_weights=True" in str(err.value)
    forked = other.fork(trace, 1, other_weights=True)
    assert not torch.equal(forked.final_latents, trace.final_latents)
    assert torch.equal(explainer.fork(trace, 1).final_latents, trace.final_latents)  # its own model: fine


FRESH_PROCESS = """
import torch
from diffexplain import load_default
explainer = load_default(progress=False)
runs = [explainer.run("a red circle on the left", num_inference_steps=4, seed=1, decode=False) for _ in range(4)]
fork = explainer.fork(runs[0], 2)
same = [torch.equal(r.final_latents, runs[0].final_latents) for r in runs[1:]]
print(same, torch.equal(fork.final_latents, runs[0].final_latents), runs[0].settings["threads"])
"""


def test_the_first_run_of_a_process_equals_the_later_ones():
    # Each was False before the count was decided once per explainer (the first run saw another load).
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", threads.ENV)}
    out = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    same, fork, count = out.stdout.split("]")[0], *out.stdout.split("]")[1].split()
    assert same == "[True, True, True" and fork == "True" and int(count) >= 1
