"""``Cascade.run_stage``: a later stage on its own, on the input its diffusers pipeline takes (IF stage II:
``image=``; Kandinsky's decoder: ``image_embeds=`` and ``negative_image_embeds=``). On the previous
stage's output it equals that stage of a full cascade run bit for bit; on an input of one's own it equals
the stage's pipeline; the wrong input is named with what was expected."""

from __future__ import annotations

import warnings

import pytest
import torch

from diffexplain import Cascade, CascadeTrace, Explainer, Trace
from diffexplain.families.tiny_kandinsky import TINY_EMBEDDING_DIM, TINY_IMAGE_SIZE, tiny_kandinsky_pipelines
from tests.tiny_families import IF_STAGE_1_SIZE, tiny_if_pipelines

PROMPT = "a red circle on the left"
STEPS = 3
D = TINY_EMBEDDING_DIM


@pytest.fixture(scope="module")
def if_pipes():
    return tiny_if_pipelines()


@pytest.fixture(scope="module")
def if_cascade(if_pipes) -> Cascade:
    return Cascade.from_pipelines(*if_pipes, progress=False)


@pytest.fixture(scope="module")
def if_trace(if_cascade) -> CascadeTrace:
    return if_cascade.run(
        PROMPT, seed=4, I=dict(num_inference_steps=STEPS), II=dict(num_inference_steps=STEPS, noise_level=100)
    )


@pytest.fixture(scope="module")
def k_pipes():
    return tiny_kandinsky_pipelines()


@pytest.fixture(scope="module")
def k_cascade(k_pipes) -> Cascade:
    return Cascade.from_pipelines(*k_pipes, names=("prior", "decoder"), progress=False)


@pytest.fixture(scope="module")
def k_trace(k_cascade) -> CascadeTrace:
    return k_cascade.run(
        PROMPT,
        seed=2,
        prior=dict(num_inference_steps=STEPS),
        decoder=dict(num_inference_steps=STEPS, guidance_scale=3.0),
    )


def noop(x: torch.Tensor, *, ctx) -> None:
    return None


def same_trace(a: Trace, b: Trace) -> None:
    assert torch.equal(a.final_latents, b.final_latents)
    for k in range(len(b)):
        assert torch.equal(a["step.latents", k], b["step.latents", k])
        assert torch.equal(a["step.guidance", k], b["step.guidance", k])
    assert a.settings["seed"] == b.settings["seed"]


# ---- IF stage II ----------------------------------------------------------------------------------
def test_stage_two_alone_on_stage_ones_picture_equals_the_cascades(if_cascade, if_trace):
    alone = if_cascade.run_stage(
        "II", PROMPT, image=if_trace["II.input"], seed=4, num_inference_steps=STEPS, noise_level=100
    )
    assert isinstance(alone, Trace)
    same_trace(alone, if_trace.stages["II"])
    assert torch.equal(alone["prompt.image.cond"], if_trace["II.prompt.image.cond"])  # the same x_up drawn
    again = if_cascade.stages["II"].fork(alone, 1)  # an ordinary trace: it forks as one
    assert torch.equal(again.final_latents, alone.final_latents)
    # the first stage runs from the prompt, as in the cascade; a cascade of stage II alone runs it too
    same_trace(if_cascade.run_stage("I", PROMPT, seed=4, num_inference_steps=STEPS), if_trace.stages["I"])
    only_two = Cascade({"II": if_cascade.stages["II"]}, progress=False)
    same_trace(
        only_two.run_stage(
            "II", PROMPT, image=if_trace["II.input"], seed=4, num_inference_steps=STEPS, noise_level=100
        ),
        if_trace.stages["II"],
    )


def test_stage_two_on_a_pil_image_equals_the_pipeline(if_pipes, if_cascade, if_trace):
    """A picture of one's own, as a PIL image: IFSuperResolutionPipeline(image=pil) bit for bit."""
    pil = if_trace.stages["I"].images[0]
    assert pil.size == (IF_STAGE_1_SIZE, IF_STAGE_1_SIZE)
    alone = if_cascade.run_stage("II", PROMPT, image=pil, seed=9, num_inference_steps=STEPS)
    expected = if_pipes[1](
        PROMPT,
        image=pil,
        generator=torch.Generator().manual_seed(9),
        num_inference_steps=STEPS,
        output_type="pt",
        clean_caption=False,
    ).images
    assert torch.equal(alone.final_latents, expected)
    hooked = []
    if_cascade.run_stage(
        "II",
        PROMPT,
        image=[pil],
        seed=9,
        num_inference_steps=STEPS,
        hooks={"II.step.latents": lambda x, *, ctx: hooked.append(ctx.step)},
    )
    assert hooked == list(range(STEPS))


def test_stage_two_names_a_wrong_input(if_cascade, if_trace):
    picture = if_trace["II.input"]
    cases = [
        (dict(), TypeError, r"stage 'II' \(DeepFloyd IF stage II.*pass image=, a \[B, 3, h, w\] tensor in \[-1, 1\]"),
        (dict(image=picture[0]), ValueError, r"image=: expected a \[B, 3, h, w\] .* got a tensor of shape \(3, 16, 16\)"),
        (dict(image=picture.numpy()), TypeError, r"image=: expected .*or a PIL image.*; got ndarray"),
        (dict(image=torch.cat([picture, picture])), ValueError, "image= holds 2 picture\\(s\\) but the prompt 1"),
        (dict(image=picture.round().to(torch.uint8)), TypeError, "image=: expected a floating-point tensor"),
        (dict(image=picture * float("nan")), ValueError, "image= holds non-finite values"),
        (dict(image_embeds=torch.zeros(1, 8)), TypeError, "conditioned on a picture, not on image embeddings: pass image=.*instead of image_embeds="),
        (dict(image=picture, generator=torch.Generator()), TypeError, "takes no generator=: .* seeded with seed="),
        (dict(image=picture, latents=torch.zeros(1)), TypeError, "takes no latents=: x_T is drawn from seed="),
        (dict(image=picture, hooks={"I.step.latents": noop}), ValueError, "hooks= holds hooks of stage I: run_stage\\('II', ...\\) runs stage II alone"),
        (dict(image=picture, hooks={"II.input": noop}), ValueError, "hook 'II.input': run_stage takes stage II's input as an argument"),
    ]  # fmt: skip
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            if_cascade.run_stage("II", PROMPT, **kwargs)
    with pytest.raises(
        TypeError, match="stage 'I' \\(DeepFloyd IF stage I\\) takes no previous stage's output, so no image="
    ):
        if_cascade.run_stage("I", PROMPT, image=picture)
    with pytest.raises(ValueError, match="stage='III': expected one of I, II"):
        if_cascade.run_stage("III", PROMPT, image=picture)
    with pytest.raises(TypeError, match="no stage runs before it: use cascade.run_stage\\('II', prompt"):
        Cascade({"II": if_cascade.stages["II"]}).run(PROMPT)


def test_the_stage_two_explainers_error_points_to_a_real_run_stage(if_pipes, if_cascade, if_trace):
    """The error of IF II run on its own names ``cascade.run_stage('II', prompt, image=...)``, which runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a stage on its own: IF II's pipeline warns without stage I
        explainer = Explainer.from_pipeline(if_pipes[1], progress=False)
    with pytest.raises(TypeError, match=r"cascade.run_stage\('II', prompt, image=picture\)") as error:
        explainer.run(PROMPT, image=if_trace["II.input"])
    assert "Cascade({'II': explainer})" in str(error.value)
    run = Cascade({"II": explainer}, progress=False).run_stage(
        "II", PROMPT, image=if_trace["II.input"], seed=4, num_inference_steps=STEPS, noise_level=100
    )
    same_trace(run, if_trace.stages["II"])


# ---- Kandinsky's decoder --------------------------------------------------------------------------
def test_the_decoder_alone_on_the_priors_embeddings_equals_the_cascades(k_cascade, k_trace):
    pair = k_trace["decoder.input"]
    alone = k_cascade.run_stage(
        "decoder",
        PROMPT,
        image_embeds=pair[0],
        negative_image_embeds=pair[1],
        seed=2,
        num_inference_steps=STEPS,
        guidance_scale=3.0,
    )
    same_trace(alone, k_trace.stages["decoder"])
    assert torch.equal(alone.image, k_trace.stages["decoder"].image)
    lists = k_cascade.run_stage(  # lists of [1, D] tensors, as the pipeline takes them
        "decoder",
        PROMPT,
        image_embeds=[pair[0]],
        negative_image_embeds=[pair[1]],
        seed=2,
        num_inference_steps=STEPS,
        guidance_scale=3.0,
    )
    assert torch.equal(lists.final_latents, alone.final_latents)


def test_an_interpolated_embedding_equals_the_decoder_pipeline(k_pipes, k_cascade, k_trace):
    """Halfway between two prompts' embeddings (as the interpolation pipelines mix them): the pipeline's picture."""
    other = k_cascade.run(
        "a blue square", seed=2, prior=dict(num_inference_steps=STEPS), decoder=dict(num_inference_steps=1)
    )
    mixed = 0.5 * k_trace["decoder.input"][0] + 0.5 * other["decoder.input"][0]
    negative = k_trace["decoder.input"][1]
    alone = k_cascade.run_stage(
        "decoder", "half a circle, half a square", image_embeds=mixed, negative_image_embeds=negative,
        seed=7, num_inference_steps=STEPS,
    )  # fmt: skip
    expected = k_pipes[1](
        image_embeds=mixed,
        negative_image_embeds=negative,
        num_inference_steps=STEPS,
        height=TINY_IMAGE_SIZE,
        width=TINY_IMAGE_SIZE,
        output_type="pt",
        generator=torch.Generator().manual_seed(7),
    ).images
    assert torch.equal(alone.image, expected)
    assert torch.equal(alone["prompt.cond"], mixed)


def test_the_decoder_names_a_wrong_input(k_cascade, k_trace):
    embeds, negative = k_trace["decoder.input"]
    cases = [
        (dict(), "draws from image embeddings: pass image_embeds and negative_image_embeds=, a \\[B, 32\\] tensor"),
        (dict(image_embeds=embeds), "draws from image embeddings: pass negative_image_embeds=, a \\[B, 32\\] tensor"),
        (dict(image=torch.zeros(1, 3, 8, 8)), "draws from image embeddings, not a picture: pass image_embeds= and negative_image_embeds=.*instead of image="),
        (dict(image_embeds=embeds, negative_image_embeds="none"), "negative_image_embeds=: expected a \\[B, 32\\] tensor.*; got str"),
    ]  # fmt: skip
    for kwargs, message in cases:
        with pytest.raises(TypeError, match=message):
            k_cascade.run_stage("decoder", PROMPT, **kwargs)
    with pytest.raises(
        ValueError, match="image_embeds=: expected a \\[B, 32\\] tensor.*got a tensor of shape \\(1, 5\\)"
    ):
        k_cascade.run_stage("decoder", PROMPT, image_embeds=torch.zeros(1, 5), negative_image_embeds=negative)
    with pytest.raises(ValueError, match="image_embeds= holds 1 embedding\\(s\\) but the prompt 2"):
        k_cascade.run_stage("decoder", [PROMPT, PROMPT], image_embeds=embeds, negative_image_embeds=negative)
    with pytest.raises(
        TypeError,
        match="stage 'prior' \\(Kandinsky 2.2 prior\\) takes no previous stage's output, so no image_embeds=",
    ):
        k_cascade.run_stage("prior", PROMPT, image_embeds=embeds)
    decoder = k_cascade.stages["decoder"]
    with pytest.raises(
        TypeError,
        match="cascade.run_stage\\('decoder', prompt, image_embeds=..., negative_image_embeds=...\\)",
    ):
        decoder.run(PROMPT, image_embeds=embeds)
