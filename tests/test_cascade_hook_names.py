"""In a cascade, every error about a hook names it as the user wrote it (``II.step.model.cond``,
``decoder.step.model.cond``), not only as the stage's own loop knows it (``step.model.cond``): unknown
points, a point of another stage, something that is no function, a replacement of the wrong shape or
dtype, a change in place, an exception inside the hook, and reading a cascade trace."""

from __future__ import annotations

import pytest
import torch

from diffexplain import Cascade, CascadeTrace, Hook, TraceKeyError
from diffexplain.families.tiny_kandinsky import tiny_kandinsky_pipelines
from tests.tiny_families import tiny_if_pipelines

PROMPT = "a red circle on the left"
STEPS = 2
IF_SETTINGS = dict(I=dict(num_inference_steps=STEPS), II=dict(num_inference_steps=STEPS))
K_SETTINGS = dict(prior=dict(num_inference_steps=STEPS), decoder=dict(num_inference_steps=STEPS))


@pytest.fixture(scope="module")
def if_cascade() -> Cascade:
    return Cascade.from_pipelines(*tiny_if_pipelines(), progress=False)


@pytest.fixture(scope="module")
def k_cascade() -> Cascade:
    return Cascade.from_pipelines(*tiny_kandinsky_pipelines(), names=("prior", "decoder"), progress=False)


def one_channel(x: torch.Tensor, *, ctx) -> torch.Tensor:
    return x[:, :1]


def as_half(x: torch.Tensor, *, ctx) -> torch.Tensor:
    return x.half()


def in_place(x: torch.Tensor, *, ctx) -> None:
    x.mul_(2)


def boom(x: torch.Tensor, *, ctx) -> None:
    raise RuntimeError("boom")


def double(x: torch.Tensor, *, ctx) -> torch.Tensor:
    return x * 2


def test_names_that_match_no_point_of_the_stage(if_cascade):
    cases = [
        ({"II.step.model.condd": double}, "unknown hook point of stage II 'II.step.model.condd'. Did you mean 'II.step.model.cond'"),
        ({"I.prompt.image.cond": double}, "unknown hook point of stage I 'I.prompt.image.cond'.*Valid names: I.prompt.cond,"),
        ({"II.attn.*": double}, "unknown hook point of stage II 'II.attn.\\*'.*Valid names: II.input, II.prompt.cond"),
        ([("I", Hook("prompt.image.cond", double))], "unknown hook point of stage I 'I.prompt.image.cond'"),
    ]  # fmt: skip
    for hooks, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            if_cascade.run(PROMPT, seed=0, hooks=hooks, **IF_SETTINGS)
        assert "'step." not in str(error.value) and "'prompt." not in str(error.value)  # never the inner name
    with pytest.raises(
        TypeError, match="hook 'II.step.model.cond': expected a function hook\\(x, \\*, ctx\\)"
    ):
        if_cascade.run(PROMPT, seed=0, hooks={"II.step.model.cond": 3}, **IF_SETTINGS)
    with pytest.raises(TypeError, match="hook 'II.input': expected a function"):
        if_cascade.run(PROMPT, seed=0, hooks={"II.input": "flip"}, **IF_SETTINGS)
    with pytest.raises(TypeError, match="cascade hooks= must be a dict \\{'<stage>.<point>': fn\\}"):
        if_cascade.run(PROMPT, seed=0, hooks=double, **IF_SETTINGS)


@pytest.mark.parametrize(
    ("fn", "error", "message"),
    [
        (one_channel, ValueError, "hook 'one_channel' at 'II.step.model.cond' \\(step 1\\) returned a tensor with the wrong shape"),
        (as_half, ValueError, "hook 'as_half' at 'II.step.model.cond' \\(step 1\\) returned a tensor with the wrong dtype"),
        (in_place, ValueError, "hook 'in_place' at 'II.step.model.cond' \\(step 1\\) modified its input in place"),
    ],
)  # fmt: skip
def test_a_bad_replacement_names_the_cascades_point(if_cascade, fn, error, message):
    with pytest.raises(error, match=message):
        if_cascade.run(PROMPT, seed=0, hooks=[("II", Hook("step.model.cond", fn, steps=[1]))], **IF_SETTINGS)


def test_an_exception_inside_a_hook_goes_on_with_a_note_naming_it(if_cascade):
    with pytest.raises(RuntimeError, match="^boom") as error:
        if_cascade.run(PROMPT, seed=0, hooks={"II.step.model.cond": boom}, **IF_SETTINGS)
    assert "diffexplain: raised in hook 'boom' at 'II.step.model.cond' (step 0)" in error.value.__notes__
    with pytest.raises(RuntimeError, match="^boom") as error:
        if_cascade.run(PROMPT, seed=0, hooks={"II.input": boom}, **IF_SETTINGS)
    assert "diffexplain: raised in hook 'boom' at 'II.input' (step None)" in error.value.__notes__
    with pytest.raises(ValueError, match="hook 'one_channel' at 'II.input' \\(step None\\) .*wrong shape"):
        if_cascade.run(PROMPT, seed=0, hooks={"II.input": one_channel}, **IF_SETTINGS)


def test_a_hook_that_works_is_recorded_under_its_own_name(if_cascade):
    plain = if_cascade.run(PROMPT, seed=0, **IF_SETTINGS)
    hooked = if_cascade.run(PROMPT, seed=0, hooks={"II.step.model.cond": double}, **IF_SETTINGS)
    assert [(r.name, r.hook) for r in hooked.stages["II"].replacements] == [
        ("step.model.cond", "double") for _ in range(STEPS)
    ]
    assert torch.equal(hooked["II.step.model.cond", 0], 2 * plain["II.step.model.cond", 0])


def test_reading_a_cascade_trace_names_the_cascades_point(if_cascade):
    trace: CascadeTrace = if_cascade.run(
        PROMPT,
        seed=0,
        I=dict(num_inference_steps=STEPS, guidance_scale=1.0),
        II=dict(num_inference_steps=STEPS, keep=["step.latents"]),
    )
    cases = [
        (("II.step.model.condd", 1), "unknown name in stage II 'II.step.model.condd'. Did you mean 'II.step.model.cond'"),
        (("II.prompt.cond", 1), "'II.prompt.cond' is a run-level name with no steps; use trace\\['II.prompt.cond'\\]"),
        (("II.input", 1), "'II.input' is run-level .* use trace\\['II.input'\\]"),
        ("I.input", "'I.input': stage I received nothing from a previous stage"),
        (("I.step.model.uncond", 1), "'I.step.model.uncond' \\(stage I's 'step.model.uncond'\\): .*guidance was off"),
        (("II.step.pred_x0", 1), "'II.step.pred_x0' \\(stage II's 'step.pred_x0'\\): .*it was not kept"),
    ]  # fmt: skip
    for key, message in cases:
        with pytest.raises(TraceKeyError, match=message):
            trace[key]  # noqa: B018


def test_kandinskys_decoder_names_its_points_too(k_cascade):
    with pytest.raises(ValueError, match="unknown hook point of stage decoder 'decoder.step.model.condd'"):
        k_cascade.run(PROMPT, seed=0, hooks={"decoder.step.model.condd": double}, **K_SETTINGS)
    with pytest.raises(
        ValueError, match="hook 'one_channel' at 'decoder.step.model.cond' \\(step 0\\) .*wrong shape"
    ):
        k_cascade.run(PROMPT, seed=0, hooks={"decoder.step.model.cond": one_channel}, **K_SETTINGS)
    with pytest.raises(RuntimeError, match="^boom") as error:
        k_cascade.run(PROMPT, seed=0, hooks={"prior.step.guidance": boom}, **K_SETTINGS)
    assert "diffexplain: raised in hook 'boom' at 'prior.step.guidance' (step 0)" in error.value.__notes__
    trace = k_cascade.run(PROMPT, seed=0, hooks={"decoder.step.model.cond": double}, **K_SETTINGS)
    with pytest.raises(TraceKeyError, match="unknown name in stage decoder 'decoder.step.model.condd'"):
        trace["decoder.step.model.condd", 0]  # noqa: B018
    with pytest.raises(ValueError, match="hook 'one_channel' at 'decoder.step.model.cond' \\(step 1\\)"):
        k_cascade.fork(trace, "decoder", 1, hooks={"decoder.step.model.cond": one_channel})
