"""Jobs: a run or fork advanced one loop step at a time, and stopped between steps; and the widgets'
step-by-step actions with their Stop button and the sliders moved during a run (issue #19)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from diffexplain import Explainer
from diffexplain.jobs import Job
from diffexplain.widgets import GuidanceLab, PromptSwap
from tests.conftest import PROMPT

STEPS = 6


def test_a_job_run_to_the_end_is_the_run(explainer: Explainer) -> None:
    whole = explainer.run(PROMPT, num_inference_steps=STEPS, seed=3)
    job = explainer.start_run(PROMPT, num_inference_steps=STEPS, seed=3)
    assert isinstance(job, Job) and len(job.trace.steps) == 0  # nothing ran yet
    seen = []
    while job.advance():
        seen.append(len(job.trace.steps))
    assert seen == list(range(1, STEPS + 1))  # one step per advance; the last advance decodes
    assert job.done and job.result is job.trace and job.trace.status == "complete"
    assert torch.equal(job.result.image, whole.image)
    assert [s.timestep for s in job.result.steps] == [s.timestep for s in whole.steps]


def test_arguments_are_checked_when_the_job_is_made(explainer: Explainer) -> None:
    with pytest.raises(TypeError, match="prompt must be a string"):
        explainer.start_run(None)  # type: ignore[arg-type]
    trace = explainer.run(PROMPT, num_inference_steps=3, seed=0)
    with pytest.raises(IndexError, match="cannot fork at step 7"):
        explainer.start_fork(trace, 7)


def test_a_stopped_job_keeps_its_finished_steps_and_can_be_forked(explainer: Explainer) -> None:
    whole = explainer.run(PROMPT, num_inference_steps=STEPS, seed=4)
    processors = {name: p for name, p in explainer.unet.attn_processors.items()}
    threads = torch.get_num_threads()
    job = explainer.start_run(PROMPT, num_inference_steps=STEPS, seed=4)
    for _ in range(3):
        job.advance()
    assert len(job.trace.steps) == 3
    partial = job.stop()
    assert partial.status == "stopped" and job.stopped and job.done
    assert "stopped after 3 finished steps" in partial.message
    assert not job.advance() and len(partial.steps) == 3  # nothing more runs
    with pytest.raises(RuntimeError, match="did not finish: stopped after 3"):
        job.finish()
    assert explainer.last_trace is partial
    # the model is as it was: its own attention processors back, the thread count restored
    assert {name: p for name, p in explainer.unet.attn_processors.items()} == processors
    assert torch.get_num_threads() == threads
    # a finished step of the stopped trace forks into the whole run, bit for bit
    resumed = explainer.fork(partial, 2)
    assert torch.equal(resumed.image, whole.image)


def test_yield_from_a_job_returns_its_trace_and_closing_the_caller_stops_it(explainer: Explainer) -> None:
    def two_runs():
        first = yield from explainer.start_run(PROMPT, num_inference_steps=3, seed=0)
        second = yield from explainer.start_run(PROMPT, num_inference_steps=3, seed=1)
        return first, second

    work = two_runs()
    steps = []
    with pytest.raises(StopIteration) as done:
        while True:
            steps.append(next(work))
    first, second = done.value.value
    assert steps == [0, 1, 2, 0, 1, 2] and first.status == second.status == "complete"

    work = two_runs()
    next(work), next(work)
    work.close()
    assert explainer.last_trace.status == "stopped" and len(explainer.last_trace) == 2


class ManualLoop:
    """Stands in for the kernel's event loop: queues the widget's step callbacks for the test to run."""

    def __init__(self) -> None:
        self.queue: list[Callable[[], None]] = []

    def __call__(self, callback: Callable[[], None]) -> None:
        self.queue.append(callback)

    def turn(self) -> bool:
        """Run one queued callback (one step of the widget's action); False when none is queued."""
        if not self.queue:
            return False
        self.queue.pop(0)()
        return True

    def run_out(self) -> None:
        while self.turn():
            pass


def test_a_button_action_runs_step_by_step_with_stop_on_and_buttons_off(explainer: Explainer) -> None:
    explainer.progress = False
    lab = GuidanceLab(explainer, PROMPT, seed=0, num_inference_steps=STEPS)
    old_on = lab.on
    assert lab.stop_button.disabled  # nothing runs
    loop = lab.schedule = ManualLoop()
    lab.seed.value = 5
    lab.run_button.click()
    assert lab.work is not None and not lab.stop_button.disabled
    assert all(b.disabled for b in lab.buttons())
    for _ in range(3):
        loop.turn()
    assert lab.on is old_on  # the pictures change only when the action finishes
    loop.run_out()
    assert lab.work is None and lab.stop_button.disabled and not any(b.disabled for b in lab.buttons())
    assert lab.on is not old_on and lab.on.settings["seed"] == 5 and len(lab.on) == STEPS
    assert "Error" not in lab.status.value


def test_stop_ends_the_action_after_the_current_step_and_keeps_the_pictures(explainer: Explainer) -> None:
    explainer.progress = False
    lab = GuidanceLab(explainer, PROMPT, seed=0, num_inference_steps=STEPS)
    old_off, old_on, old_picture = lab.off, lab.on, lab.images["on"].value
    loop = lab.schedule = ManualLoop()
    lab.seed.value = 9
    lab.run_button.click()
    for _ in range(STEPS + 2):  # the w = 1 run, then two steps of the guided one
        loop.turn()
    lab.stop_button.click()
    loop.run_out()
    assert lab.work is None and lab.stop_button.disabled and not any(b.disabled for b in lab.buttons())
    assert lab.off is old_off and lab.on is old_on  # the last finished pair, not half of a new one
    assert lab.images["on"].value == old_picture
    partial = explainer.last_trace
    assert partial.status == "stopped" and 0 < len(partial) < STEPS and partial.settings["seed"] == 9
    assert f"stopped after {len(partial)} of {STEPS} steps" in lab.status.value
    lab.run_button.click()  # and the widget works again
    loop.run_out()
    assert lab.on.settings["seed"] == 9 and lab.on.status == "complete"


def test_a_slider_moved_during_a_run_is_applied_once_with_its_latest_value(explainer: Explainer) -> None:
    explainer.progress = False
    lab = GuidanceLab(explainer, PROMPT, seed=0, num_inference_steps=STEPS)
    calls: list[float] = []
    real = lab._on_scale

    def counting(change=None):
        calls.append(lab.scale.value)
        real(change)

    lab._on_scale = counting  # type: ignore[method-assign]
    lab.scale.unobserve_all("value")
    lab.scale.observe(lab.guard(counting), names="value")
    loop = lab.schedule = ManualLoop()
    lab.range_button.click()  # a fork: a few steps of work
    loop.turn()
    for w in (2.0, 3.0, 4.5):  # dragged while the fork runs
        lab.scale.value = w
    assert calls == []  # nothing redrawn mid-run
    loop.run_out()
    # the fork's own redraw re-guides at the slider's value, then the deferred drag runs once, at 4.5
    assert calls == [4.5, 4.5]
    assert "w = 4.5" in lab.strip_label.value


def test_an_error_in_a_step_ends_the_action_and_shows_it(explainer: Explainer) -> None:
    explainer.progress = False
    ps = PromptSwap(explainer, PROMPT, "a blue square", num_inference_steps=STEPS)
    loop = ps.schedule = ManualLoop()
    ps.prompt_b.value = "a blue square"
    names = ("unet", "scheduler", "tokenizer", "text_encoder", "vae")
    ps.explainer = Explainer(**{k: getattr(explainer, k) for k in names}, progress=False)
    real = ps.explainer.start_fork

    def broken(*args, **kwargs):
        job = real(*args, **kwargs)
        steps = iter(job)

        def fail():
            yield next(steps)
            raise RuntimeError("boom in step 2")

        return fail()

    ps.explainer.start_fork = broken  # type: ignore[method-assign]
    ps.swap_button.click()
    loop.run_out()
    assert "boom in step 2" in ps.status.value and ps.work is None
    assert not any(b.disabled for b in ps.buttons()) and ps.stop_button.disabled
