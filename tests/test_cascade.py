"""A Cascade of DeepFloyd IF's two stages over tiny parts: the final picture equals IFPipeline followed by
IFSuperResolutionPipeline bit for bit; forks in either stage replay it bit for bit; hooks per stage and
between stages; one file for the whole cascade trace; clear errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers.models.attention_processor import AttnAddedKVProcessor

from diffexplain import Cascade, CascadeTrace, Explainer, Hook, TraceFileError
from tests.tiny_families import IF_STAGE_1_SIZE, IF_STAGE_2_SIZE, tiny_if_pipelines

PROMPT = "a red circle on the left"
STEPS = 5
SETTINGS = dict(I=dict(num_inference_steps=STEPS), II=dict(num_inference_steps=STEPS))


@pytest.fixture(scope="module")
def pipes():
    return tiny_if_pipelines()


@pytest.fixture(scope="module")
def cascade(pipes) -> Cascade:
    return Cascade.from_pipelines(*pipes, progress=False)


@pytest.fixture(scope="module")
def trace(cascade) -> CascadeTrace:
    return cascade.run(PROMPT, seed=3, **SETTINGS)


def pipelines_images(
    pipes,
    seed: int,
    guidance: tuple[float, float] = (7.0, 4.0),
    noise_level: int = 250,
    prompt=PROMPT,
    **kwargs,
):
    """IFPipeline then IFSuperResolutionPipeline, each with a generator seeded ``seed`` (output_type="pt")."""
    one, two = pipes
    common = dict(num_inference_steps=STEPS, output_type="pt", clean_caption=False, **kwargs)
    low = one(
        prompt, generator=torch.Generator().manual_seed(seed), guidance_scale=guidance[0], **common
    ).images
    high = two(
        prompt,
        image=low,
        generator=torch.Generator().manual_seed(seed),
        guidance_scale=guidance[1],
        noise_level=noise_level,
        **common,
    ).images
    return low, high


def test_the_cascade_equals_the_two_pipelines(pipes, trace):
    low, high = pipelines_images(pipes, 3)
    assert torch.equal(trace.stages["I"].final_latents, low)
    assert torch.equal(trace.stages["II"].final_latents, high)
    assert torch.equal(trace["II.input"], low)  # what passed between the stages
    assert tuple(trace["I.step.pred_x0", 2].shape) == (1, 3, IF_STAGE_1_SIZE, IF_STAGE_1_SIZE)
    assert tuple(trace["II.step.pred_x0", 2].shape) == (1, 3, IF_STAGE_2_SIZE, IF_STAGE_2_SIZE)
    assert trace.images[0].size == (IF_STAGE_2_SIZE, IF_STAGE_2_SIZE)


def test_guidance_off_and_another_noise_level_equal_the_pipelines(pipes, cascade):
    run = cascade.run(
        PROMPT,
        seed=5,
        I=dict(num_inference_steps=STEPS, guidance_scale=1.0),
        II=dict(num_inference_steps=STEPS, guidance_scale=1.0, noise_level=100),
    )
    low, high = pipelines_images(pipes, 5, guidance=(1.0, 1.0), noise_level=100)
    assert torch.equal(run.stages["I"].final_latents, low) and torch.equal(
        run.stages["II"].final_latents, high
    )
    assert int(run["II.prompt.noise_level.cond"][0]) == 100


def test_a_batch_with_negative_prompts_equals_the_pipelines(pipes, cascade):
    prompts, negatives = [PROMPT, "a blue square"], ["green", "red"]
    run = cascade.run(prompts, negative_prompt=negatives, seed=1, **SETTINGS)
    low, high = pipelines_images(pipes, 1, prompt=prompts, negative_prompt=negatives)
    assert torch.equal(run.stages["I"].final_latents, low) and torch.equal(
        run.stages["II"].final_latents, high
    )


@pytest.mark.parametrize(("stage", "step"), [("I", 0), ("I", 3), ("II", 0), ("II", 4)])
def test_a_fork_without_change_is_bit_exact(cascade, trace, stage, step):
    forked = cascade.fork(trace, stage, step)
    assert torch.equal(forked.stages["II"].final_latents, trace.stages["II"].final_latents)
    assert (forked.stages["I"] is trace.stages["I"]) is (stage == "II")  # a fork in II keeps stage I
    assert forked.settings["forked"] == {"stage": stage, "step": step}


def test_a_fork_in_stage_one_reruns_stage_two_and_one_in_two_keeps_one(cascade, trace):
    in_one = cascade.fork(trace, "I", 2, guidance_scale=1.0)
    assert not torch.equal(in_one.stages["I"].final_latents, trace.stages["I"].final_latents)
    assert torch.equal(in_one["II.input"], in_one.stages["I"].final_latents)  # stage II saw the new picture
    assert not torch.equal(in_one.stages["II"].final_latents, trace.stages["II"].final_latents)
    assert in_one.stages["II"].forked_from is None  # run again from scratch, same seed
    in_two = cascade.fork(trace, "II", 2, prompt="a blue square")
    assert in_two.stages["I"] is trace.stages["I"]
    assert torch.equal(in_two["II.step.latents", 2], trace["II.step.latents", 2])
    assert not torch.equal(in_two.stages["II"].final_latents, trace.stages["II"].final_latents)
    # the prompt was re-encoded, the upscaled stage-I picture kept
    assert torch.equal(in_two["II.prompt.image.cond"], trace["II.prompt.image.cond"])
    assert not torch.equal(in_two["II.prompt.cond"], trace["II.prompt.cond"])


def test_hooks_per_stage_and_between_stages(cascade, trace):
    seen = []

    def record(x, *, ctx):
        seen.append((ctx.name, ctx.step))

    hooked = cascade.run(
        PROMPT,
        seed=3,
        hooks=[("II.step.latents", record), ("I", Hook("step.guidance", record, steps=[1]))],
        **SETTINGS,
    )
    assert torch.equal(hooked.stages["II"].final_latents, trace.stages["II"].final_latents)  # read only
    assert seen == [("step.guidance", 1)] + [("step.latents", i) for i in range(STEPS)]
    flipped = cascade.run(PROMPT, seed=3, hooks={"II.input": lambda x, *, ctx: x.flip(-1)}, **SETTINGS)
    assert torch.equal(flipped["II.input"], trace["II.input"].flip(-1))
    assert torch.equal(flipped.stages["I"].final_latents, trace.stages["I"].final_latents)
    assert not torch.equal(flipped.stages["II"].final_latents, trace.stages["II"].final_latents)
    assert [r.name for r in flipped.replacements] == ["II.input"]


def test_hook_points_are_named_per_stage(cascade):
    names = [p.name for p in cascade.hook_points()]
    assert names[0] == "I.prompt.cond" and "II.input" in names
    assert {"I.step.latents", "II.step.latents", "II.prompt.image.cond", "II.prompt.noise_level.cond"} <= set(
        names
    )
    assert names.index("II.input") < names.index("II.prompt.cond")


def test_the_trace_saves_to_one_file_that_loads_and_forks(cascade, trace, tmp_path):
    path = tmp_path / "cascade.safetensors"
    trace.save(path)
    loaded = CascadeTrace.load(path, cascade=cascade)
    assert loaded.names == ("I", "II") and loaded.settings["seed"] == 3
    for name in ("I.step.pred_x0", "II.step.next"):
        assert torch.equal(loaded[name, 1], trace[name, 1])
    assert torch.equal(loaded["II.input"], trace["II.input"])
    assert loaded.stages["I"].previews is not None  # pictures without the model, as a single trace's
    assert torch.equal(loaded.fork("I", 1).stages["II"].final_latents, trace.stages["II"].final_latents)
    with pytest.raises(
        TraceFileError, match="expected 'diffexplain.cascade' \\(a single trace: Trace.load\\)"
    ):
        trace.stages["I"].save(tmp_path / "one.safetensors")
        CascadeTrace.load(tmp_path / "one.safetensors")


def test_bad_input_is_named(cascade, trace, pipes):
    with pytest.raises(ValueError, match="hook 'III.step.latents': .* one of I, II"):
        cascade.run(PROMPT, seed=0, hooks={"III.step.latents": lambda x, *, ctx: None}, **SETTINGS)
    with pytest.raises(ValueError, match="'I.input': the first stage receives nothing"):
        cascade.run(PROMPT, seed=0, hooks={"I.input": lambda x, *, ctx: None}, **SETTINGS)
    with pytest.raises(TypeError, match="unknown run setting\\(s\\) num_inference_steps: a cascade takes"):
        cascade.run(PROMPT, num_inference_steps=3)
    with pytest.raises(TypeError, match="II=\\{'seed': ...\\}: seed is the cascade's"):
        cascade.run(PROMPT, II=dict(seed=1))
    with pytest.raises(ValueError, match="stage='III': expected one of I, II"):
        cascade.fork(trace, "III", 0)
    with pytest.raises(
        TypeError, match="stage 'I' \\(DeepFloyd IF stage I\\) takes no previous stage's output"
    ):
        Cascade({"II": cascade.stages["II"], "I": cascade.stages["I"]})
    with pytest.raises(ValueError, match="noise_level must be an int in 0..999; got -1"):
        cascade.run(PROMPT, II=dict(noise_level=-1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a stage on its own: IF II cannot run without stage I's picture
        with pytest.raises(TypeError, match="run it with diffexplain.Cascade"):
            Explainer.from_pipeline(pipes[1], progress=False).run(PROMPT, image=trace["II.input"])


def test_from_pretrained_loads_two_folders_and_names_a_wrong_one(pipes, trace, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipes[0].save_pretrained(tmp_path / "one")
        pipes[1].save_pretrained(tmp_path / "two")
        loaded = Cascade.from_pretrained(tmp_path / "one", tmp_path / "two")
        assert Explainer.from_pretrained(tmp_path / "one").family.name == "if"  # stage I on its own
    assert loaded.stages["II"].text_encoder is loaded.stages["I"].text_encoder  # one T5 for both
    for stage in loaded.stages.values():  # not saved with the weights (diffusers' IF tests do the same)
        stage.unet.set_attn_processor(AttnAddedKVProcessor())
    run = loaded.run(PROMPT, seed=3, **SETTINGS)
    assert torch.equal(run.stages["II"].final_latents, trace.stages["II"].final_latents)
    with pytest.raises(ValueError, match="two: a IFSuperResolutionPipeline; expected a IFPipeline"):
        Cascade.from_pretrained(tmp_path / "two", tmp_path / "two")
