"""x̂0 derived from the scheduler's own ᾱ_t / σ_t equals the scheduler's own x̂0, for every scheduler."""

from __future__ import annotations

import pytest
import torch

from diffexplain import SCHEDULER_NAMES
from diffexplain.noise_levels import pred_x0_from, step_index
from diffexplain.scheduler_state import restore
from tests.conftest import PROMPT

RETURNS_X0 = {"ddim", "ddpm", "lms", "euler", "euler_a", "heun"}
CONVERTS = {"dpm++2m", "dpm++2m_sde", "unipc"}


@pytest.mark.parametrize("scheduler_name", list(SCHEDULER_NAMES))
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_derived_pred_x0_matches_the_scheduler(request, prediction, scheduler_name):
    ex = request.getfixturevalue("explainer" if prediction == "epsilon" else "explainer_v").set_scheduler(
        scheduler_name
    )
    derived = []
    trace = ex.run(
        PROMPT,
        num_inference_steps=4,
        seed=4,
        decode=False,
        hooks={"step.pred_x0": lambda x, *, ctx: derived.append(x)},
    )
    for i, record in enumerate(trace.steps):
        latents, eps = trace["step.latents", i], trace["step.guidance", i]
        assert torch.allclose(pred_x0_from(latents, eps, record.level), derived[i])
        if scheduler_name in RETURNS_X0:  # the trace stores the scheduler's pred_original_sample
            assert torch.allclose(derived[i], trace["step.pred_x0", i], rtol=1e-4, atol=1e-4)
        elif scheduler_name in CONVERTS:  # compare with the x0 the solver computes internally
            info = trace.settings["scheduler"]
            scheduler = restore(info["class"], info["config"], record.restart.scheduler_state)
            t = scheduler.timesteps[i]
            scheduler._step_index = step_index(scheduler, t)
            own = scheduler.convert_model_output(eps, sample=latents)
            assert torch.allclose(derived[i], own, rtol=1e-4, atol=1e-4)
        level = record.level
        assert level.sigma == pytest.approx(((1 - level.alpha_bar) / level.alpha_bar) ** 0.5, rel=1e-6)


def test_sample_prediction_has_identity_coefficients(parts):
    from diffexplain import Explainer

    scheduler = type(parts["scheduler"]).from_config(parts["scheduler"].config, prediction_type="sample")
    ex = Explainer(**{**parts, "scheduler": scheduler}, progress=False).set_scheduler("euler")
    trace = ex.run(PROMPT, num_inference_steps=2, seed=0, decode=False)
    assert (trace.steps[0].level.a, trace.steps[0].level.b) == (0.0, 1.0)
    assert torch.equal(trace["step.pred_x0", 0], trace["step.guidance", 0])
