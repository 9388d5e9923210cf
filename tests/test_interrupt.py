"""Interrupted runs keep the partial trace of the finished steps, and re-raise the original exception."""

from __future__ import annotations

import pytest

from tests.conftest import PROMPT


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, ValueError])
def test_interrupt_keeps_finished_steps(explainer, exc_type):
    k = 2

    def stop(x, *, ctx):
        if ctx.step == k:
            raise exc_type("stop here")
        return x + 0.0 if ctx.step == 0 else None

    with pytest.raises(exc_type, match="stop here") as info:
        explainer.run(PROMPT, num_inference_steps=4, seed=0, hooks={"step.guidance": stop})
    partial = info.value.partial_trace
    assert partial is explainer.last_trace
    assert len(partial) == k and partial.status == "interrupted"
    assert f"during step {k}" in partial.message
    assert any("partial trace" in note for note in info.value.__notes__)
    assert [r.step for r in partial.replacements] == [0]  # the unfinished step's records are dropped
    assert partial["step.pred_x0"].shape[0] == k
    # a partial trace can still be forked from its finished steps
    resumed = explainer.fork(partial, 1)
    assert len(resumed) == 4 and resumed.status == "complete"
