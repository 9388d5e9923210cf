"""Forks: bit-exact replay for every scheduler (stochastic ones included), and changes that act from step k."""

from __future__ import annotations

import pytest
import torch

import diffexplain
from diffexplain import SCHEDULER_NAMES, Trace
from diffexplain.interventions import cfg_off
from tests.conftest import PROMPT

STEPS = 4


def assert_same(a: Trace, b: Trace) -> None:
    assert len(a) == len(b)
    assert torch.equal(a.final_latents, b.final_latents)
    for i in range(len(a)):
        assert a.steps[i].tensors.keys() == b.steps[i].tensors.keys()
        for name in a.steps[i].tensors:
            assert torch.equal(a[name, i], b[name, i]), (name, i)
    assert torch.equal(a.image, b.image)


@pytest.mark.parametrize("scheduler_name", list(SCHEDULER_NAMES))
def test_fork_without_changes_is_bit_exact(explainer, scheduler_name):
    explainer.set_scheduler(scheduler_name)
    trace = explainer.run(PROMPT, num_inference_steps=STEPS, seed=7)
    n = len(trace)
    for k in sorted({0, n // 2, n - 1}):
        forked = explainer.fork(trace, k)
        assert forked.forked_from == k
        assert_same(forked, trace)
        for i in range(k):  # steps before k are copied, not re-run
            assert forked.steps[i] is trace.steps[i]


def test_fork_ddim_with_eta_is_bit_exact(explainer):
    explainer.set_scheduler("ddim")
    trace = explainer.run(PROMPT, num_inference_steps=STEPS, seed=7, eta=1.0)
    assert_same(explainer.fork(trace, 2), trace)


def test_fork_of_loaded_trace_is_bit_exact(explainer, tmp_path):
    explainer.set_scheduler("dpm++2m_sde")
    trace = explainer.run(PROMPT, num_inference_steps=STEPS, seed=7)
    trace.save(tmp_path / "t.safetensors")
    loaded = Trace.load(tmp_path / "t.safetensors")
    with pytest.raises(ValueError, match="pass explainer="):
        diffexplain.fork(loaded, 1)
    assert_same(diffexplain.fork(loaded, 1, explainer=explainer), trace)
    assert_same(Trace.load(tmp_path / "t.safetensors", explainer=explainer).explainer.fork(loaded, 3), trace)


def test_module_level_fork_uses_the_attached_explainer(explainer):
    trace = explainer.run(PROMPT, num_inference_steps=STEPS, seed=1)
    assert_same(diffexplain.fork(trace, 2), trace)


def changed_from(a: Trace, b: Trace) -> int:
    """First step whose x̂0 differs."""
    return next(i for i in range(len(a)) if not torch.equal(a["step.pred_x0", i], b["step.pred_x0", i]))


@pytest.mark.parametrize(
    "changes",
    [
        {"guidance_scale": 2.0},
        {"prompt": "a green triangle"},
        {"negative_prompt": "red"},
        {"hooks": [cfg_off()]},
        {"latents": "noise"},
    ],
)
def test_fork_with_changes_changes_later_steps_only(explainer, changes):
    explainer.set_scheduler("euler_a")
    trace = explainer.run(PROMPT, num_inference_steps=STEPS, seed=3)
    k = 2
    if changes.get("latents") == "noise":
        changes = {"latents": trace.steps[k].restart.latents + 0.5}
    forked = explainer.fork(trace, k, **changes)
    assert changed_from(forked, trace) == k
    assert not torch.equal(forked.final_latents, trace.final_latents)
    for key in ("prompt", "negative_prompt", "guidance_scale"):
        if key in changes:
            assert forked.settings[key] == changes[key]
    if "latents" in changes:
        assert forked.replacements[-1].name == "step.latents" and forked.replacements[-1].step == k


def test_fork_can_switch_guidance_on_and_off(explainer):
    off = explainer.run(PROMPT, num_inference_steps=STEPS, seed=3, guidance_scale=1.0)
    on = explainer.fork(off, 1, guidance_scale=7.5)
    full_on = explainer.run(PROMPT, num_inference_steps=STEPS, seed=3)
    assert "step.model.uncond" in on.steps[1].tensors and "step.model.uncond" not in on.steps[0].tensors
    assert not torch.equal(on.final_latents, full_on.final_latents)  # step 0 was unguided
    back_off = explainer.fork(full_on, 2, guidance_scale=1.0)
    assert "step.model.uncond" not in back_off.steps[2].tensors


def test_fork_rejects_bad_latents_and_steps(explainer):
    trace = explainer.run(PROMPT, num_inference_steps=STEPS, seed=3, decode=False)
    with pytest.raises(ValueError, match="wrong shape"):
        explainer.fork(trace, 1, latents=torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="non-finite"):
        explainer.fork(trace, 1, latents=torch.full((1, 4, 8, 8), float("nan")))
    with pytest.raises(IndexError, match="cannot fork at step 9"):
        explainer.fork(trace, 9)
    assert explainer.fork(trace, -1).forked_from == STEPS - 1
