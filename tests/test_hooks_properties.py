"""Property-based: any valid replacement is accepted and recorded exactly; any invalid one is refused by name."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffexplain import Hook
from diffexplain.hooks import HookContext, HookRunner, Replacement, check_replacement
from diffexplain.names import HOOK_NAMES

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)
values = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=16)


def make_ctx(name: str) -> HookContext:
    return HookContext(name, 0, 1.0, 1, 7.5, 1.0, {}, None)  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=shapes,
    dtype=st.sampled_from(DTYPES),
    fill=values,
    point=st.sampled_from(HOOK_NAMES),
    data=st.data(),
)
def test_valid_replacements_are_accepted_and_recorded(shape, dtype, fill, point, data):
    x = torch.zeros(shape, dtype=dtype)
    new = torch.full(shape, fill, dtype=dtype)
    steps = data.draw(st.sampled_from([None, 0, [0, 1], range(0, 3)]))

    def replacer(t, *, ctx):
        return new

    records: list[Replacement] = []
    out = HookRunner([Hook(point, replacer, steps=steps)], num_steps=3).apply(
        point, x, 0, make_ctx, records.append
    )
    assert out is new
    assert records == [
        Replacement(point, 0, "test_valid_replacements_are_accepted_and_recorded.<locals>.replacer")
    ]


@st.composite
def invalid(draw):
    shape = draw(shapes)
    dtype = draw(st.sampled_from(DTYPES))
    x = torch.zeros(shape, dtype=dtype)
    kind = draw(st.sampled_from(["shape", "dtype", "nan", "inf", "type", "device"]))
    if kind == "shape":
        bad = torch.zeros((*shape, draw(st.integers(1, 3))), dtype=dtype)
    elif kind == "dtype":
        bad = torch.zeros(
            shape, dtype=draw(st.sampled_from([d for d in DTYPES if d != dtype] + [torch.int64]))
        )
    elif kind in ("nan", "inf"):
        bad = torch.zeros(shape, dtype=dtype)
        index = tuple(draw(st.integers(0, n - 1)) for n in shape)
        bad[index] = float("nan") if kind == "nan" else draw(st.sampled_from([float("inf"), float("-inf")]))
    elif kind == "device":
        bad = torch.zeros(shape, dtype=dtype, device="meta")
    else:
        bad = draw(st.sampled_from([1.0, [0.0], "x", x.numpy() if dtype != torch.bfloat16 else (1,)]))
    return x, bad, kind


@settings(max_examples=60, deadline=None)
@given(case=invalid(), point=st.sampled_from(HOOK_NAMES))
def test_invalid_replacements_raise_naming_the_hook(case, point):
    x, bad, kind = case

    def bad_hook(t, *, ctx):
        return bad

    runner = HookRunner([Hook(point, bad_hook)], num_steps=1)
    with pytest.raises(ValueError) as info:
        runner.apply(point, x, 0, make_ctx, lambda r: None)
    message = str(info.value)
    assert point in message and "bad_hook" in message
    expected = {
        "shape": "shape",
        "dtype": "dtype",
        "nan": "non-finite",
        "inf": "non-finite",
        "device": "device",
    }
    assert expected.get(kind, "expected None or a torch.Tensor") in message


@settings(max_examples=30, deadline=None)
@given(shape=shapes, n_bad=st.integers(1, 5))
def test_non_finite_count_is_reported(shape, n_bad):
    x = torch.zeros(shape)
    bad = x.clone().flatten()
    n = min(n_bad, bad.numel())
    bad[:n] = float("nan")
    with pytest.raises(ValueError, match=f" {n} non-finite"):
        check_replacement(bad.reshape(shape), x, point="step.next", step=2, hook="h")
