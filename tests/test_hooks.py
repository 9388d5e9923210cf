"""Hook behaviour: replacement, checks and their errors, names and globs, step filters, order, scoping."""

from __future__ import annotations

import pytest
import torch

from diffexplain import Hook, Replacement
from diffexplain.hooks import resolve_names
from tests.conftest import PROMPT

STEPS = 3


def run(explainer, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("decode", False)
    return explainer.run(PROMPT, **kwargs)


def test_none_keeps_and_tensor_replaces(explainer):
    base = run(explainer)
    seen = []

    def observe(x, *, ctx):
        seen.append((ctx.name, ctx.step, ctx.timestep, ctx.num_steps))

    same = run(explainer, hooks={"step.latents": observe})
    assert torch.equal(same.final_latents, base.final_latents)
    assert [s[1] for s in seen] == [0, 1, 2] and all(s[3] == STEPS for s in seen)
    assert same.replacements == []

    def double(x, *, ctx):
        return x * 2

    changed = run(explainer, hooks={"step.pred_x0": double})
    assert not torch.equal(changed.final_latents, base.final_latents)
    assert (
        torch.equal(changed["step.pred_x0", 0], 2 * base["step.pred_x0", 0]) is False
    )  # scheduler x̂0 differs
    assert changed.replacements[0] == Replacement(
        "step.pred_x0", 0, "test_none_keeps_and_tensor_replaces.<locals>.double"
    )


def test_replaced_pred_x0_drives_the_scheduler(explainer):
    explainer.set_scheduler("ddim")
    target = torch.zeros(1, 4, 8, 8)
    trace = run(explainer, hooks={"step.pred_x0": lambda x, *, ctx: target.clone()})
    # the stored x̂0 is the replacement, and the eps the scheduler saw is converted back from it
    assert torch.equal(trace["step.pred_x0", 1], target)
    names = [(r.name, r.step) for r in trace.replacements]
    assert ("step.guidance", 1) in names
    # DDIM moves toward x̂0 = 0: the final latents are mostly gone (only √(1−ᾱ_final)·ε is left)
    base = run(explainer)
    assert trace.final_latents.norm() < 0.1 * base.final_latents.norm()


def test_context_current_holds_this_steps_tensors(explainer):
    got = {}

    def look(x, *, ctx):
        got[ctx.step] = set(ctx.current)
        assert len(ctx.trace) == ctx.step  # the partial trace holds the finished steps only
        with pytest.raises(TypeError):
            ctx.current["x"] = x  # read-only

    run(explainer, hooks={"step.guidance": look})
    assert got[0] == {
        "step.latents",
        "step.prompt.cond",
        "step.prompt.uncond",
        "step.model.cond",
        "step.model.uncond",
    }


@pytest.mark.parametrize(
    ("make_bad", "match"),
    [
        (lambda x: x[..., :-1], "wrong shape: expected \\(1, 4, 8, 8\\), given \\(1, 4, 8, 7\\)"),
        (lambda x: x.double(), "wrong dtype: expected torch.float32, given torch.float64"),
        (lambda x: torch.empty_like(x, device="meta"), "wrong device: expected cpu, given meta"),
        (lambda x: x.clone().fill_(float("nan")), "256 non-finite"),
        (lambda x: torch.where(x > 0, float("inf"), x), "non-finite"),
        (lambda x: x.numpy(), "returned ndarray"),
        (lambda x: 3.0, "returned float"),
    ],
)
def test_bad_replacements_raise_naming_the_hook(explainer, make_bad, match):
    def bad_hook(x, *, ctx):
        return make_bad(x)

    with pytest.raises(ValueError, match=match) as info:
        run(explainer, hooks={"step.model.cond": bad_hook})
    message = str(info.value)
    assert "'step.model.cond'" in message and "bad_hook" in message and "(step 0)" in message


def test_in_place_modification_is_refused(explainer):
    with pytest.raises(ValueError, match="modified its input in place"):
        run(explainer, hooks={"step.next": lambda x, *, ctx: x.mul_(2)})


def test_unknown_name_suggests_close_names(explainer):
    with pytest.raises(ValueError, match="Did you mean 'step.pred_x0'"):
        run(explainer, hooks={"step.pred_xo": lambda x, *, ctx: None})
    with pytest.raises(ValueError, match="unknown hook point 'nothing.\\*'"):
        run(explainer, hooks={"nothing.*": lambda x, *, ctx: None})


def test_glob_names_and_forms_of_hooks(explainer):
    calls = []

    def rec(x, *, ctx):
        calls.append(ctx.name)

    assert resolve_names("step.model.*") == ("step.model.cond", "step.model.uncond")
    run(explainer, hooks=[("step.model.*", rec), Hook("prompt.*", rec)], num_inference_steps=1)
    assert sorted(calls) == ["prompt.cond", "prompt.uncond", "step.model.cond", "step.model.uncond"]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [(1, [1]), (-1, [3]), (range(1, 3), [1, 2]), ([0, 3], [0, 3]), (lambda s: s % 2 == 0, [0, 2])],
)
def test_step_filters(explainer, steps, expected):
    seen = []
    run(
        explainer,
        hooks=[Hook("step.latents", lambda x, *, ctx: seen.append(ctx.step), steps=steps)],
        num_inference_steps=4,
    )
    assert seen == expected


def test_hooks_at_one_point_run_in_order_each_seeing_the_previous(explainer):
    log = []

    def add_one(x, *, ctx):
        log.append(("add_one", float(x.flatten()[0])))
        return x + 1

    def times_two(x, *, ctx):
        log.append(("times_two", float(x.flatten()[0])))
        return x * 2

    base = run(explainer, num_inference_steps=1)
    trace = run(
        explainer, hooks=[("latents.init", add_one), ("latents.init", times_two)], num_inference_steps=1
    )
    x0 = float(base["latents.init"].flatten()[0])
    assert log == [("add_one", x0), ("times_two", x0 + 1)]
    assert torch.allclose(trace["latents.init"], (base["latents.init"] + 1) * 2)
    assert [r.hook.split(".")[-1] for r in trace.replacements] == ["add_one", "times_two"]


def test_scoped_hooks_apply_inside_the_block_only_and_leave_on_error(explainer):
    calls = []

    def count(x, *, ctx):
        calls.append(ctx.step)

    with explainer.hooks({"step.latents": count}):
        run(explainer, num_inference_steps=2)
        with explainer.hooks({"step.latents": count}):  # nested blocks add up
            run(explainer, num_inference_steps=1)
    assert calls == [0, 1, 0, 0]
    run(explainer, num_inference_steps=1)
    assert len(calls) == 4

    with pytest.raises(RuntimeError, match="boom"), explainer.hooks({"step.latents": count}):
        raise RuntimeError("boom")
    run(explainer, num_inference_steps=1)
    assert len(calls) == 4 and explainer._scoped_hooks == []


def test_call_hooks_do_not_outlive_the_call(explainer):
    calls = []
    with pytest.raises(ValueError):
        run(explainer, hooks={"step.latents": lambda x, *, ctx: calls.append(1) or x.double()})
    run(explainer, num_inference_steps=1)
    assert calls == [1]


def test_heun_exposes_every_model_evaluation(explainer):
    explainer.set_scheduler("heun")
    seen = []
    trace = run(explainer, hooks={"step.model.cond": lambda x, *, ctx: seen.append((ctx.step, ctx.timestep))})
    assert len(seen) == len(trace) == 2 * STEPS - 1
    assert [s.stage for s in trace.steps[:3]] == ["first_order", "second_order", "first_order"]
    assert trace.timesteps == [t for _, t in seen]


def test_guidance_off_makes_one_unet_call_per_step_with_cond_only(explainer):
    batches = []
    handle = explainer.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        trace = run(explainer, guidance_scale=1.0)
    finally:
        handle.remove()
    assert batches == [1] * STEPS
    assert "step.model.uncond" not in trace.steps[0].tensors and "prompt.uncond" not in trace.run_tensors
    assert trace["step.guidance", 0] is trace["step.model.cond", 0]
