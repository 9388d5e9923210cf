"""Every trace records its family's conventions (diffexplain.conventions): what step.model.* holds and the raw
output's sign, the time the model is given, and the guidance scale on the classic and the pipeline's scale;
and x̂0 at the last step is the final latents, for every family, by the recorded convention."""

from __future__ import annotations

import pytest

from diffexplain import Explainer, Trace
from diffexplain.conventions import PREDICTIONS, Conventions
from tests.conftest import PROMPT
from tests.tiny_families import (
    FLUX_MAX_SEQUENCE_LENGTH,
    SD3_MAX_SEQUENCE_LENGTH,
    tiny_flux_pipeline,
    tiny_sd3_pipeline,
    tiny_sdxl_pipeline,
)
from tests.tiny_parts import tiny_parts, tiny_unet

FAMILIES = {
    "sd": (lambda: tiny_parts(), {}, "epsilon"),
    "sd-v": (lambda: tiny_parts("v_prediction"), {}, "v_prediction"),
    "sdxl": (tiny_sdxl_pipeline, {}, "epsilon"),
    "sd3": (tiny_sd3_pipeline, {"max_sequence_length": SD3_MAX_SEQUENCE_LENGTH}, "flow"),
    "flux": (tiny_flux_pipeline, {"max_sequence_length": FLUX_MAX_SEQUENCE_LENGTH}, "flow"),
}


def explainer(family: str) -> Explainer:
    make, _, _ = FAMILIES[family]
    made = make()
    if isinstance(made, dict):
        return Explainer(**made, progress=False).set_scheduler("ddim")
    return Explainer.from_pipeline(made, progress=False)


@pytest.mark.filterwarnings("ignore:Flux. guidance_scale > 1 is true CFG")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_trace_records_its_conventions_and_keeps_them_in_its_file(family, tmp_path):
    ex = explainer(family)
    _, options, prediction = FAMILIES[family]
    guidance_scale = 3.0 if family != "flux" else 2.0
    trace = ex.run(
        PROMPT, num_inference_steps=3, seed=0, guidance_scale=guidance_scale, decode=False, **options
    )
    conventions = trace.conventions
    assert conventions["prediction"] == prediction
    assert conventions["prediction_meaning"] == PREDICTIONS[prediction]
    assert conventions["model_output_sign"] == 1
    assert conventions["guidance_scale"] == guidance_scale
    assert conventions["pipeline_guidance_scale"] == guidance_scale  # classic CFG: the same number
    path = tmp_path / "run.safetensors"
    trace.save(path)
    assert Trace.load(path).conventions == conventions
    # x̂0 at the last step is the picture the loop ends on, read by the recorded convention: exactly where
    # the schedule ends at σ = 0 (flow, Euler), within √(1 − ᾱ_0) of the noise where DDIM ends at t = 0
    last = trace["step.pred_x0", len(trace) - 1]
    gap = (last - trace.final_latents).abs().max().item()
    assert gap < (1e-4 if prediction == "flow" else 0.05 * trace.final_latents.abs().max().item()), gap


def test_flux_and_sd3_say_which_time_the_model_is_given():
    assert explainer("flux").family.conventions(None).model_time == "σ = t/1000"
    ex = explainer("sd3")
    assert ex.family.conventions(ex.scheduler).model_time == "t = 1000·σ"


def test_an_lcm_unet_says_w_is_an_embedded_input():
    ex = Explainer(**{**tiny_parts(), "unet": tiny_unet(time_cond_proj_dim=8)}, progress=False)
    conventions = ex.family.conventions(ex.scheduler)
    assert "timestep_cond" in conventions.guidance_formula


def test_conventions_scales_and_bad_values():
    shifted = Conventions(prediction="flow", model_output_sign=-1, classic_offset=1.0)
    assert shifted.classic_scale(4.0) == 5.0 and shifted.pipeline_scale_of(5.0) == 4.0
    assert Conventions.from_record(shifted.record()) == shifted
    with pytest.raises(ValueError, match="unknown prediction 'noise'.*expected one of epsilon"):
        Conventions(prediction="noise")
    with pytest.raises(ValueError, match="model_output_sign must be 1 or -1"):
        Conventions(prediction="epsilon", model_output_sign=2)


def test_a_file_from_before_conventions_has_none():
    ex = explainer("sd")
    trace = ex.run(PROMPT, num_inference_steps=2, seed=0, decode=False)
    model = {k: v for k, v in trace.run_settings.model.items() if k != "conventions"}
    import dataclasses

    trace.run_settings = dataclasses.replace(trace.run_settings, model=model)
    assert trace.conventions is None


def test_widgets_name_who_reads_the_prompt():
    from diffexplain.views import text_reader
    from diffexplain.widgets import AttentionMaps

    ex = explainer("sd3")
    assert text_reader(None, ex) == "CLIP and T5"
    trace = ex.run(
        PROMPT, num_inference_steps=2, seed=0, decode=False, max_sequence_length=SD3_MAX_SEQUENCE_LENGTH
    )
    assert text_reader(trace) == "CLIP and T5"  # from the trace's record alone
    assert "as CLIP and T5 wrote them" in AttentionMaps(trace, explainer=ex).children[0].value


def test_the_step_view_names_the_family_and_who_read_the_prompt():
    from diffexplain.web.view_data import header

    ex = explainer("sd3")
    trace = ex.run(
        PROMPT, num_inference_steps=2, seed=0, decode=False, max_sequence_length=SD3_MAX_SEQUENCE_LENGTH
    )
    assert header(trace)["model"] == "Stable Diffusion 3 · text read by CLIP and T5"


def test_the_raw_model_output_follows_the_recorded_sign():
    ex = explainer("sd3")
    trace = ex.run(
        PROMPT, num_inference_steps=2, seed=0, decode=False, max_sequence_length=SD3_MAX_SEQUENCE_LENGTH
    )
    assert trace.raw_model_output(1) is trace["step.model.cond", 1]  # sign +1: the same tensor
    with pytest.raises(ValueError, match="branch='both': expected 'cond' or 'uncond'"):
        trace.raw_model_output(0, "both")
