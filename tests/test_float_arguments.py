"""Every float argument of the public API refuses NaN and ±inf with an error naming it (issue #29,
part 4), through one check (``checks.check_float``), before anything runs."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from diffexplain import checks, guidance_counts, render, schedules
from diffexplain import interventions as iv
from diffexplain.attention import edits
from diffexplain.previews import make_previews
from diffexplain.widgets import ForwardProcess, GuidanceLab, NoiseLab, PromptSwap
from tests.conftest import PROMPT

Call = Callable[[Any, Any, float], object]

CASES: list[tuple[str, str, Call]] = [
    ("run", "guidance_scale", lambda ex, trace, v: ex.run(PROMPT, num_inference_steps=1, guidance_scale=v)),
    ("run", "eta", lambda ex, trace, v: ex.run(PROMPT, num_inference_steps=1, eta=v)),
    ("start_run", "eta", lambda ex, trace, v: ex.start_run(PROMPT, num_inference_steps=1, eta=v)),
    ("fork", "guidance_scale", lambda ex, trace, v: ex.fork(trace, 0, guidance_scale=v)),
    ("Trace.reguide", "guidance_scale", lambda ex, trace, v: trace.reguide(0, v)),
    ("set_guidance", "scale", lambda ex, trace, v: iv.set_guidance(v)),
    ("scale_delta", "factor", lambda ex, trace, v: iv.scale_delta(v)),
    ("add_noise", "strength", lambda ex, trace, v: iv.add_noise(0, v)),
    ("add_noise", "mask top", lambda ex, trace, v: iv.add_noise(0, 1.0, mask=(v, 1.0, 0.0, 1.0))),
    ("latent_mask", "mask bottom", lambda ex, trace, v: iv.latent_mask((0.0, v, 0.0, 1.0), 8, 8)),
    ("noise_pattern", "mix", lambda ex, trace, v: iv.noise_pattern("blob", mix=v)),
    (
        "count_seeds",
        "scales[1]",
        lambda ex, trace, v: guidance_counts.count_seeds(ex, PROMPT, scales=[1.0, v], seeds=1),
    ),
    (
        "column_steps",
        "guidance_scale",
        lambda ex, trace, v: next(guidance_counts.column_steps(ex, PROMPT, v, (0,))),
    ),
    ("noise_scheduler", "beta_start", lambda ex, trace, v: schedules.noise_scheduler(beta_start=v)),
    ("schedule_curves", "beta_end", lambda ex, trace, v: schedules.schedule_curves(beta_end=v)),
    ("render.diverging", "limit", lambda ex, trace, v: render.diverging(torch.zeros(2, 2), limit=v)),
    ("render.heat", "limit", lambda ex, trace, v: render.heat(torch.zeros(2, 2), limit=v)),
    (
        "render.overlay",
        "alpha",
        lambda ex, trace, v: render.overlay(Image.new("RGB", (2, 2)), torch.zeros(2, 2), alpha=v),
    ),
    ("make_previews", "budget_s", lambda ex, trace, v: make_previews(trace, ex, budget_s=v)),
    ("edits.reweight", "factor", lambda ex, trace, v: edits.reweight("red", v)),
    ("edits.confine", "outside", lambda ex, trace, v: edits.confine("red", torch.ones(4, 4), outside=v)),
    ("GuidanceLab", "guidance_scale", lambda ex, trace, v: GuidanceLab(ex, PROMPT, guidance_scale=v)),
    ("NoiseLab", "guidance_scale", lambda ex, trace, v: NoiseLab(ex, PROMPT, guidance_scale=v)),
    (
        "PromptSwap",
        "guidance_scale",
        lambda ex, trace, v: PromptSwap(ex, PROMPT, "a blue square", guidance_scale=v),
    ),
    ("ForwardProcess", "guidance_scale", lambda ex, trace, v: ForwardProcess(ex, guidance_scale=v)),
]


@pytest.fixture(scope="module")
def module_explainer(parts):
    from diffexplain import Explainer

    return Explainer(**parts, progress=False).set_scheduler("ddim")


@pytest.fixture(scope="module")
def trace(module_explainer):
    return module_explainer.run(PROMPT, num_inference_steps=2, seed=0, guidance_scale=3.0)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(("where", "name", "call"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_nan_and_inf_are_refused_naming_the_argument(module_explainer, trace, where, name, call, value):
    calls = []
    handle = module_explainer.unet.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(ValueError, match=rf"^{re.escape(name)} must be a finite number.* got {value!r}$"):
            call(module_explainer, trace, value)
    finally:
        handle.remove()
    assert calls == []  # refused before the model ran


@pytest.mark.parametrize(("where", "name", "call"), CASES[:6], ids=[f"{c[0]}-{c[1]}" for c in CASES[:6]])
def test_a_bool_or_a_string_is_not_a_number(module_explainer, trace, where, name, call):
    for value in (True, "0.5"):  # (None is "the default" where the argument has one)
        with pytest.raises(TypeError, match=rf"^{re.escape(name)} must be a number"):
            call(module_explainer, trace, value)


def test_finite_values_in_range_are_taken(module_explainer, trace):
    assert torch.equal(trace.reguide(1, 3.0).eps_guided, trace["step.guidance", 1])
    assert iv.noise_pattern("blob", mix=0).name == "latents.init"
    assert iv.latent_mask((0, 0.5, 0, 1), 8, 8).sum() == 32
    with pytest.raises(ValueError, match=r"^mix must be a finite number from 0 to 1 .* got 1.5$"):
        iv.noise_pattern("blob", mix=1.5)
    with pytest.raises(ValueError, match=r"^eta must be a finite number ≥ 0 .* got -0.5$"):
        module_explainer.start_run(PROMPT, num_inference_steps=1, eta=-0.5)


@given(
    value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**1100), 2**1100)),
    low=st.one_of(st.none(), st.floats(-10, 10)),
    high=st.one_of(st.none(), st.floats(-10, 10)),
)
def test_check_float_takes_exactly_the_finite_numbers_in_range(value, low, high):
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range counts as infinite
        number = math.inf
    ok = math.isfinite(number) and (low is None or number >= low) and (high is None or number <= high)
    if ok:
        assert checks.check_float("x", value, low, high) == number
    else:
        with pytest.raises(ValueError, match=r"^x must be a finite number"):
            checks.check_float("x", value, low, high)
