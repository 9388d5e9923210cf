"""A hook that cannot be called as ``hook(x, ctx=ctx)`` is refused when it is registered, with an error
that says hooks take ``(x, *, ctx)`` (issue #29, part 4); every form the loop can call is taken."""

from __future__ import annotations

import functools

import pytest
import torch

from diffexplain import Hook
from diffexplain.hooks import as_hooks
from tests.conftest import PROMPT


def _positional_only(x):
    return None


class Scale:
    """A callable object taking ``ctx`` as a keyword."""

    def __call__(self, x: torch.Tensor, *, ctx) -> torch.Tensor:
        return x * 1.0


def _two_tensors(x, y, *, ctx):
    return None


@pytest.mark.parametrize(
    ("fn", "takes"),
    [
        (lambda x: x, r"\(x\)"),
        (_positional_only, r"\(x\)"),
        (lambda *, ctx: None, r"\(\*, ctx\)"),
        (_two_tensors, r"\(x, y, \*, ctx\)"),
        (lambda: None, r"\(\)"),
    ],
    ids=["lambda-x", "def-x", "ctx-only", "two-tensors", "nothing"],
)
def test_a_hook_without_the_signature_is_refused_at_registration(explainer, fn, takes):
    message = rf"takes {takes}, but hooks take \(x, \*, ctx\) and are called as hook\(x, ctx=ctx\)"
    with pytest.raises(TypeError, match=message):
        Hook("step.latents", fn)
    with pytest.raises(TypeError, match=r"for 'step.pred_x0' takes .* `def hook\(x, \*, ctx\): \.\.\.`"):
        as_hooks({"step.pred_x0": fn})
    calls = []
    handle = explainer.unet.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(TypeError, match="hooks take"):
            explainer.run(PROMPT, num_inference_steps=1, seed=0, hooks={"step.latents": fn})
        with pytest.raises(TypeError, match="hooks take"), explainer.hooks({"step.latents": fn}):
            pass  # refused on entering the block, before any run
    finally:
        handle.remove()
    assert calls == []


def test_every_form_the_loop_can_call_is_taken_and_called(explainer):
    seen: list[str] = []

    def keyword_only(x, *, ctx):
        seen.append("keyword_only")

    def keyword_or_positional(x, ctx):
        seen.append("keyword_or_positional")

    def any_keywords(x, **kwargs):
        seen.append("any_keywords")

    def with_a_default(x, extra=1, *, ctx, more=2):
        seen.append("with_a_default")

    forms = [
        keyword_only,
        keyword_or_positional,
        any_keywords,
        with_a_default,
        lambda *args, **kwargs: seen.append("varargs"),
        functools.partial(lambda scale, x, *, ctx: seen.append(f"partial {scale}"), 2),
        Scale(),
    ]
    explainer.run(
        PROMPT, num_inference_steps=1, seed=0, decode=False, hooks=[("step.latents", f) for f in forms]
    )
    assert seen == [
        "keyword_only",
        "keyword_or_positional",
        "any_keywords",
        "with_a_default",
        "varargs",
        "partial 2",
    ]


class Opaque:
    """A callable whose signature ``inspect.signature`` cannot read (as for some C extensions' callables)."""

    __signature__ = "not a signature"

    def __call__(self, *args, **kwargs):
        return None


def test_a_callable_whose_signature_cannot_be_read_is_taken():
    import inspect

    opaque = Opaque()
    with pytest.raises((TypeError, ValueError)):
        inspect.signature(opaque)
    assert Hook("step.latents", opaque).fn is opaque
