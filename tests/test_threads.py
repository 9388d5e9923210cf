"""CPU threads: no more than the free cores for a run, the knob, and the thread count given back."""

from __future__ import annotations

import os

import pytest
import torch

from diffexplain import threads
from tests.conftest import PROMPT


def test_auto_uses_no_more_threads_than_free_cores(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(threads, "own_load", lambda: 0.0)
    monkeypatch.setattr(os, "getloadavg", lambda: (6.4, 0.0, 0.0))  # six of eight cores busy
    before = torch.get_num_threads()
    assert threads.free_cores() == 2 and threads.chosen_threads() == min(before, 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (20.0, 0.0, 0.0))
    assert threads.free_cores() == 1  # never fewer than one
    monkeypatch.setattr(os, "getloadavg", lambda: (6.4, 0.0, 0.0))
    monkeypatch.setattr(threads, "own_load", lambda: 5.0)  # the load is mostly this process's own runs
    assert threads.free_cores() == 7


def test_own_load_measures_this_process(monkeypatch):
    threads.own_load()
    end = __import__("time").process_time() + 0.05
    while __import__("time").process_time() < end:
        pass
    assert 0.3 < threads.own_load() <= threads.usable_cores()  # about one core, busy since the last call


def test_the_knob(monkeypatch):
    monkeypatch.setenv(threads.ENV, "torch")
    assert threads.chosen_threads() is None
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.chosen_threads() == 3
    for bad in ("0", "many"):
        monkeypatch.setenv(threads.ENV, bad)
        with pytest.raises(ValueError, match="expected 'auto', 'torch' or a whole number"):
            threads.chosen_threads()


def test_a_run_sets_the_threads_for_its_length_only(explainer, monkeypatch):
    before = torch.get_num_threads()
    seen = []
    monkeypatch.setenv(threads.ENV, "1" if before > 1 else "2")
    explainer.run(
        PROMPT,
        num_inference_steps=1,
        seed=0,
        hooks={"step.next": lambda x, *, ctx: seen.append(torch.get_num_threads())},
    )
    assert seen == [int(os.environ[threads.ENV])] and torch.get_num_threads() == before
