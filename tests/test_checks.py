"""Argument checks of run and fork: each bad value is refused before anything runs, with an error that
names the argument, the value and what is expected (issue #19's API edges)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffexplain import checks
from tests.conftest import PROMPT


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"prompt": None}, TypeError, "prompt must be a string or a list of strings, got NoneType None"),
        ({"prompt": []}, ValueError, "prompt is an empty list"),
        ({"prompt": ["a", 3]}, TypeError, "prompt must be a string or a list of strings"),
        ({"negative_prompt": ["a", "b"]}, ValueError, "negative_prompt has 2 entries but prompt has 1"),
        ({"guidance_scale": -3}, ValueError, r"guidance_scale must be a finite number ≥ 0 .* got -3"),
        ({"guidance_scale": float("nan")}, ValueError, "guidance_scale must be a finite number"),
        ({"guidance_scale": "7"}, TypeError, "guidance_scale must be a number"),
        (
            {"num_inference_steps": 2.5},
            ValueError,
            "num_inference_steps must be a whole number of at least 1",
        ),
        (
            {"height": 15},
            ValueError,
            r"height must be a multiple of 2 \(the VAE's scale factor\), got 15: use 14 or 16",
        ),
        ({"width": 1}, ValueError, "width must be a multiple of 2 .* got 1: use 2"),
        ({"height": 0}, ValueError, "height must be a positive whole number of pixels, got 0"),
        (
            {"seed": 2**70},
            ValueError,
            r"seed must be a whole number from 0 to 2\*\*64 − 1, got 1180591620717411303424",
        ),
        ({"seed": -1}, ValueError, "seed must be a whole number from 0"),
        ({"seed": 1e30}, TypeError, r"seed must be a whole number .* got float 1e\+30"),
        ({"seed": True}, TypeError, "seed must be a whole number"),
    ],
)
def test_run_refuses_bad_arguments_naming_them(parts, kwargs, error, match):
    from diffexplain import Explainer

    explainer = Explainer(**parts, progress=False)
    calls = []
    handle = explainer.unet.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(error, match=match):
            explainer.run(**{"prompt": PROMPT, "num_inference_steps": 2, **kwargs})
    finally:
        handle.remove()
    assert calls == []  # refused before anything ran


def test_sizes_and_seeds_that_fit_are_taken_including_numpy_numbers(explainer):
    trace = explainer.run(
        PROMPT, num_inference_steps=np.int64(2), seed=np.int64(5), height=np.int64(16), width=24
    )
    assert trace.image.shape[-2:] == (16, 24) and trace.settings["seed"] == 5
    assert (
        explainer.run(PROMPT, num_inference_steps=1, seed=2**64 - 1, decode=False).settings["seed"]
        == 2**64 - 1
    )


def test_fork_steps_are_whole_numbers_and_may_count_from_the_end(explainer):
    trace = explainer.run(PROMPT, num_inference_steps=3, seed=0)
    with pytest.raises(TypeError, match="step must be a whole number .* got bool True"):
        explainer.fork(trace, True)
    with pytest.raises(TypeError, match="step must be a whole number .* got float 1.5"):
        explainer.fork(trace, 1.5)
    with pytest.raises(
        IndexError, match=r"cannot fork at step 3: the trace has 3 finished steps \(0..2, or −1..−3"
    ):
        explainer.fork(trace, 3)
    last = explainer.fork(trace, -1)
    assert last.forked_from == 2  # -1 is the last step, and the fork says which one it took
    with pytest.raises(ValueError, match="guidance_scale must be a finite number ≥ 0"):
        explainer.fork(trace, 1, guidance_scale=-1)
    with pytest.raises(TypeError, match="prompt must be a string"):
        explainer.fork(trace, 1, prompt=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=st.one_of(
        st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.booleans(), st.none(), st.text(max_size=3)
    )
)
def test_seed_check_accepts_exactly_the_seeds_torch_takes(value):
    import torch

    if value is None:
        assert checks.check_seed(value) is None
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64
    if ok:
        assert checks.check_seed(value) == value
        torch.Generator().manual_seed(value)  # and torch takes it
    else:
        with pytest.raises((TypeError, ValueError), match="seed must be a whole number"):
            checks.check_seed(value)


@settings(max_examples=60, deadline=None)
@given(
    value=st.one_of(st.integers(-100, 300), st.floats(-10, 300), st.booleans()),
    multiple=st.sampled_from([1, 4, 8, 16]),
)
def test_size_check_accepts_positive_multiples_only(value, multiple):
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1 and value % multiple == 0
    if ok:
        assert checks.check_size("height", value, multiple, "why") == value
    else:
        with pytest.raises(
            ValueError, match=r"^height must be a (positive whole number|multiple of)"
        ) as info:
            checks.check_size("height", value, multiple, "why")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            low = value - value % multiple
            assert f"use {low} or {low + multiple}" in str(info.value) or f"use {multiple}" in str(info.value)


@settings(max_examples=60, deadline=None)
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 50), st.booleans()))
def test_guidance_check_takes_finite_non_negative_numbers(value):
    ok = not isinstance(value, bool) and value == value and abs(value) != float("inf") and value >= 0
    if ok:
        assert checks.check_guidance_scale(value) == float(value)
    else:
        with pytest.raises((TypeError, ValueError), match="guidance_scale must be a"):
            checks.check_guidance_scale(value)


# ---- step counts where the sampler is known to break -------------------------------------------------
def _level(alpha_bar: float):
    from diffexplain.noise_levels import NoiseLevel

    a, b = 1 / alpha_bar**0.5, -((1 - alpha_bar) ** 0.5) / alpha_bar**0.5
    return NoiseLevel(a, b, alpha_bar, ((1 - alpha_bar) / alpha_bar) ** 0.5)


def test_a_start_that_is_not_pure_noise_or_is_degenerate_warns_and_a_sound_one_does_not(recwarn):
    checks.check_start_level(_level(0.003), 960.0, 25)  # 25 DDIM steps of the default model
    checks.check_start_level(_level(4e-5), 995.0, 200)
    assert not [w for w in recwarn if w.category is UserWarning]
    with pytest.warns(UserWarning, match=r"num_inference_steps=2: .* t = 500, .* 49 % picture"):
        checks.check_start_level(_level(0.49), 500.0, 2)
    with pytest.warns(UserWarning, match=r"num_inference_steps=1000: .* \|b\| = 20412: .* garbage"):
        checks.check_start_level(_level(2.4e-9), 999.0, 1000)


def test_one_ddim_step_warns_in_a_real_run(explainer):
    with pytest.warns(UserWarning, match="num_inference_steps=1: this scheduler.s first step is t = [01],"):
        explainer.run(PROMPT, num_inference_steps=1, seed=0, decode=False)


@settings(max_examples=80, deadline=None)
@given(st.floats(1e-12, 1.0, exclude_min=True))
def test_the_start_check_warns_exactly_outside_the_sound_band(alpha_bar):
    import warnings

    level = _level(alpha_bar)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checks.check_start_level(level, 900.0, 10)
    bad = alpha_bar > checks.START_SIGNAL_LIMIT or abs(level.b) > checks.START_GAIN_LIMIT
    assert len(caught) == int(bad)
    if bad:
        assert "num_inference_steps=10" in str(caught[0].message)


# ---- the widgets' seed boxes ----------------------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(st.one_of(st.integers(-10, 2**66), st.text(max_size=8), st.floats(allow_nan=True)))
def test_a_seed_box_reads_whole_numbers_only_and_names_itself(value):
    from diffexplain.widgets.inputs import SeedBox

    box = SeedBox(0, description="noise seed")
    text = value if isinstance(value, str) else str(value)
    box.value = text
    ok = text.strip().replace("_", "").isdigit() and text.strip()[:1].isdigit() and text.isascii()
    ok = ok and int(text.replace("_", "")) < 2**64
    if ok:
        assert box.seed == int(text.replace("_", ""))
        torch_seed = box.seed
        import torch

        torch.Generator().manual_seed(torch_seed)
    else:
        with pytest.raises(ValueError, match="the noise seed box holds"):
            _ = box.seed


def test_a_seed_box_takes_an_int_and_refuses_what_the_number_box_misread():
    from diffexplain.widgets.inputs import SeedBox

    box = SeedBox(3)
    box.value = 12  # as with IntText
    assert box.value == "12" and box.seed == 12
    box.value = "1e30"
    with pytest.raises(ValueError, match=r"the seed box holds '1e30': type a whole number from 0"):
        _ = box.seed


def test_warnings_point_at_the_users_line_through_run_and_its_job(explainer):
    """A warning from inside run (a cut prompt) or from inside its loop (an extreme first step) is shown
    at the caller's line, not at a line of diffexplain, torch.no_grad or the job's wrapper."""
    import warnings

    long_prompt = "a red square on the left " * 8
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainer.run(long_prompt, num_inference_steps=1, seed=0)
    assert caught and all(w.filename == __file__ for w in caught), [(w.filename, w.lineno) for w in caught]
