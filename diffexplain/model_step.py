"""One model step: x_t, t and each branch's conditioning in, ε_c, ε_u and the output's extra part out.

The loop (``loop.denoise``) and the probes (``probe.predict_x0_at``, which ForwardProcess asks) call the
model only through ``predict_branches``, so that every caller reads a model's output the same way: both
branches batched as the pipelines batch them (uncond first), the family's ``split_output`` (a learned
variance goes to the scheduler, never into x̂0), then split per branch.

Notation: x_t ``latents`` [B, C, h, w]; ε_c ``eps_cond``, ε_u ``eps_uncond`` (the model's prediction in
its own dialect: ε, v or a flow velocity); ``extra`` the unguided part (IF's learned variance).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple

import torch

from diffexplain.families.base import Conditioning, Family


class BranchPredictions(NamedTuple):
    """One model call's predictions, per branch."""

    eps_cond: torch.Tensor  # ε_c                                              [B, C, h, w]
    eps_uncond: torch.Tensor | None  # ε_u, None with guidance off            [B, C, h, w]
    extra: torch.Tensor | None  # the cond branch's unguided part (a learned variance), else None


def batched(cond: Conditioning, uncond: Conditioning | None) -> Conditioning:
    """The model's input conditioning: uncond then cond along the batch, as the pipelines concatenate it."""
    if uncond is None:
        return cond
    return {key: torch.cat([uncond[key], cond[key]]) for key in cond}  # [2B, ...] each


def predict_branches(
    family: Family,
    scheduler: Any,
    latents: torch.Tensor,
    t: torch.Tensor | float,
    cond: Conditioning,
    uncond: Conditioning | None,
    model_kwargs: dict[str, Any],
    around_call: AbstractContextManager[Any] | None = None,
    separate: bool = False,
    per_call: Callable[[], AbstractContextManager[Any]] | None = None,
) -> BranchPredictions:
    """ε_c and ε_u (with ``uncond``) at x_t and t in one batched model call, as the classic pipelines make
    it; with ``separate``, one call per branch (uncond, then cond), as a Modular Diffusers denoise block
    makes it (a batch of 2B and two of B round differently on a CPU).

    ``around_call``: a context entered around the model call(s) alone (the loop's attention capture);
    ``per_call``: one entered around each of the separate calls (a diffusers guider's ``prepare_models``).
    """
    with around_call if around_call is not None else nullcontext():
        if separate and uncond is not None:
            outputs = []
            for branch in (uncond, cond):
                with per_call() if per_call is not None else nullcontext():
                    outputs.append(family.predict(scheduler, latents, t, branch, model_kwargs))
            model_output = torch.cat(outputs)  # [2B, C, h, w], uncond rows first as batched
        else:
            model_input = torch.cat([latents] * 2) if uncond is not None else latents  # [2B or B, C, h, w]
            model_output = family.predict(scheduler, model_input, t, batched(cond, uncond), model_kwargs)
    model_output, extra = family.split_output(model_output, latents)  # extra: e.g. a learned variance
    if uncond is None:
        return BranchPredictions(model_output, None, extra)
    if extra is not None:
        extra = extra.chunk(2)[1]  # the cond branch's, as the pipelines take it (unguided)
    eps_uncond, eps_cond = model_output.chunk(2)  # [B, C, h, w] each
    return BranchPredictions(eps_cond, eps_uncond, extra)


def predictor_at(
    family: Family,
    scheduler: Any,
    cond: Conditioning,
    uncond: Conditioning | None,
    model_kwargs: dict[str, Any],
) -> Callable[[torch.Tensor, Any], tuple[torch.Tensor, torch.Tensor | None]]:
    """``predict(x, t) -> (ε_c, ε_u)``: the model on this step's conditioning at another point (a guider's
    second evaluation, Rectified-CFG++'s corrector), in one batched call, outside the attention capture."""

    def predict(x: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        eps_cond, eps_uncond, _ = predict_branches(family, scheduler, x, t, cond, uncond, model_kwargs)
        return eps_cond, eps_uncond

    return predict
