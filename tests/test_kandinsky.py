"""Kandinsky 2.2 (prior, then decoder) through diffexplain's loop over tiny parts with random weights
(``diffexplain.families.tiny_kandinsky``): the prior alone, the decoder alone and the cascade equal
KandinskyV22PriorPipeline and KandinskyV22Pipeline bit for bit (guidance on and off, with and without a
negative prompt); forks replay each stage bit for bit; the image embedding between the stages can be
swapped by a hook; hook shapes; clear errors; one file for the cascade trace; the widgets open it."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

from diffexplain import Cascade, CascadeTrace, Explainer, Trace
from diffexplain.families import FAMILIES, KandinskyDecoder, KandinskyPrior, family_for_pipeline
from diffexplain.families.tiny_kandinsky import (
    TINY_EMBEDDING_DIM,
    TINY_IMAGE_SIZE,
    TINY_TOKENS,
    tiny_kandinsky_pipelines,
)

PROMPT = "a red circle on the left"
STEPS = 5
SETTINGS = dict(prior=dict(num_inference_steps=STEPS), decoder=dict(num_inference_steps=STEPS))
D = TINY_EMBEDDING_DIM
LATENT = TINY_IMAGE_SIZE // 2  # the tiny MoVQ's scale factor is 2
DOCS = Path(__file__).resolve().parents[1] / "docs" / "families"


@pytest.fixture(scope="module")
def pipes():
    return tiny_kandinsky_pipelines()


@pytest.fixture(scope="module")
def cascade(pipes) -> Cascade:
    return Cascade.from_pipelines(*pipes, names=("prior", "decoder"), progress=False)


@pytest.fixture(scope="module")
def trace(cascade) -> CascadeTrace:
    return cascade.run(PROMPT, seed=3, **SETTINGS)


def prior_output(
    pipes, seed: int, guidance_scale: float = 4.0, negative_prompt: str | None = None, prompt=PROMPT
):
    generator = torch.Generator().manual_seed(seed)
    return pipes[0](
        prompt,
        negative_prompt=negative_prompt,
        num_inference_steps=STEPS,
        guidance_scale=guidance_scale,
        generator=generator,
    )


def decoder_output(pipes, seed: int, image_embeds, negative_image_embeds, guidance_scale: float = 4.0):
    generator = torch.Generator().manual_seed(seed)
    return pipes[1](
        image_embeds=image_embeds,
        negative_image_embeds=negative_image_embeds,
        num_inference_steps=STEPS,
        guidance_scale=guidance_scale,
        height=TINY_IMAGE_SIZE,
        width=TINY_IMAGE_SIZE,
        output_type="pt",
        generator=generator,
    ).images


# ---- parity ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("guidance_scale", "negative"), [(4.0, ""), (1.0, ""), (4.0, "blurry"), (1.0, "blurry")]
)
def test_the_prior_alone_equals_the_prior_pipeline(pipes, guidance_scale, negative):
    explainer = Explainer.from_pipeline(pipes[0], progress=False)
    run = explainer.run(
        PROMPT, negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=guidance_scale, seed=4
    )
    expected = prior_output(pipes, 4, guidance_scale, negative or None)
    pair = explainer.family.hand_over(run.final_latents, run.settings)
    assert torch.equal(pair[0], expected.image_embeds) and torch.equal(
        pair[1], expected.negative_image_embeds
    )
    rows = 2 if negative else 1  # a negative prompt runs as extra rows of the prior's batch
    assert tuple(run["step.latents", 0].shape) == (rows, D) and tuple(run.image.shape) == (rows, D)
    assert torch.equal(run.image[:1], expected.image_embeds)  # decode.image: post_process_latents(x_0)


@pytest.mark.parametrize("guidance_scale", [4.0, 1.0])
def test_the_decoder_alone_equals_the_decoder_pipeline(pipes, cascade, guidance_scale):
    """The decoder on embeddings of one's own (swapped in at 'decoder.input') equals the pipeline on them."""
    generator = torch.Generator().manual_seed(11)
    embeds, negative = torch.randn(1, D, generator=generator), torch.randn(1, D, generator=generator)
    run = cascade.run(
        PROMPT,
        seed=6,
        hooks={"decoder.input": lambda x, ctx: torch.stack([embeds, negative])},
        prior=dict(num_inference_steps=2),
        decoder=dict(num_inference_steps=STEPS, guidance_scale=guidance_scale),
    )
    expected = decoder_output(pipes, 6, embeds, negative, guidance_scale)
    assert torch.equal(run.stages["decoder"].image, expected)
    assert torch.equal(run["decoder.prompt.cond"], embeds)
    assert ("prompt.uncond" in run.stages["decoder"].run_tensors) == (guidance_scale > 1)
    assert [r.name for r in run.replacements] == ["decoder.input"]


@pytest.mark.parametrize(("guidance_scale", "negative"), [(4.0, ""), (1.0, ""), (4.0, "blurry")])
def test_the_cascade_equals_the_two_pipelines(pipes, cascade, guidance_scale, negative):
    run = cascade.run(
        PROMPT,
        negative_prompt=negative,
        seed=5,
        prior=dict(num_inference_steps=STEPS, guidance_scale=guidance_scale),
        decoder=dict(num_inference_steps=STEPS, guidance_scale=guidance_scale),
    )
    prior = prior_output(pipes, 5, guidance_scale, negative or None)
    picture = decoder_output(pipes, 5, prior.image_embeds, prior.negative_image_embeds, guidance_scale)
    assert torch.equal(run["decoder.input"], torch.stack([prior.image_embeds, prior.negative_image_embeds]))
    assert torch.equal(run.stages["decoder"].image, picture)
    assert run.images[0].size == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)


def test_a_batch_with_negative_prompts_equals_the_pipelines(pipes, cascade):
    prompts, negatives = [PROMPT, "a blue square"], ["blurry", "dark"]
    run = cascade.run(prompts, negative_prompt=negatives, seed=2, **SETTINGS)
    prior = prior_output(pipes, 2, negative_prompt=negatives, prompt=prompts)
    picture = decoder_output(pipes, 2, prior.image_embeds, prior.negative_image_embeds)
    assert tuple(run["prior.step.latents", 0].shape) == (4, D)  # the prompts' rows, then the negatives'
    assert tuple(run["decoder.input"].shape) == (2, 2, D)
    assert torch.equal(run.stages["decoder"].image, picture) and len(run.images) == 2


# ---- forks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stage", "step"), [("prior", 0), ("prior", STEPS - 1), ("decoder", 0), ("decoder", 2)]
)
def test_a_fork_without_change_is_bit_exact(cascade, trace, stage, step):
    forked = cascade.fork(trace, stage, step)
    assert torch.equal(forked.stages["decoder"].image, trace.stages["decoder"].image)
    assert torch.equal(forked["decoder.input"], trace["decoder.input"])
    assert (forked.stages["prior"] is trace.stages["prior"]) == (
        stage == "decoder"
    )  # a decoder fork keeps the prior


def test_a_fork_in_the_prior_reruns_the_decoder_on_its_new_embedding(cascade, trace):
    forked = cascade.fork(trace, "prior", 2, guidance_scale=8.0)
    assert forked.stages["prior"].forked_from == 2 and forked.settings["forked"] == {
        "stage": "prior",
        "step": 2,
    }
    assert not torch.equal(forked["decoder.input"], trace["decoder.input"])
    assert not torch.equal(forked.stages["decoder"].image, trace.stages["decoder"].image)
    assert forked.stages["decoder"].forked_from is None  # run again from scratch, same seed and settings
    assert forked.stages["decoder"].settings["num_inference_steps"] == STEPS
    again = cascade.fork(trace, "decoder", 1, guidance_scale=1.0)
    assert again.stages["prior"] is trace.stages["prior"] and again.stages["decoder"].forked_from == 1
    assert not torch.equal(again.stages["decoder"].image, trace.stages["decoder"].image)


# ---- hooks ----------------------------------------------------------------------------------------
def test_the_hand_over_hook_swaps_the_embedding(cascade, trace):
    other = cascade.run("a blue square at the top", seed=3, **SETTINGS)
    assert not torch.equal(other["decoder.input"], trace["decoder.input"])
    swapped = cascade.run(
        PROMPT,
        seed=3,
        hooks={"decoder.input": lambda x, ctx: torch.stack([other["decoder.input"][0], x[1]])},
        **SETTINGS,
    )
    assert torch.equal(swapped.stages["prior"].final_latents, trace.stages["prior"].final_latents)
    assert torch.equal(swapped.stages["decoder"].image, other.stages["decoder"].image)  # the other's picture
    seen = []
    unchanged = cascade.run(
        PROMPT, seed=3, hooks={"decoder.input": lambda x, ctx: seen.append(x.shape)}, **SETTINGS
    )
    assert seen == [torch.Size([2, 1, D])] and unchanged.replacements == []
    assert torch.equal(unchanged.stages["decoder"].image, trace.stages["decoder"].image)


def test_a_hook_on_the_guided_prediction_changes_the_embedding(cascade, trace):
    run = cascade.run(PROMPT, seed=3, hooks={"prior.step.guidance": lambda x, ctx: x * 0.5}, **SETTINGS)
    assert not torch.equal(run["decoder.input"][0], trace["decoder.input"][0])
    assert torch.equal(run["decoder.input"][1], trace["decoder.input"][1])  # the zero picture's embedding


def test_hook_points_have_the_documented_shapes(cascade, trace):
    prior, decoder = trace.stages["prior"], trace.stages["decoder"]
    expected = {
        "prompt.cond": (1, TINY_TOKENS, D),
        "prompt.text_embeds.cond": (1, D),
        "prompt.mask.uncond": (1, TINY_TOKENS),
        "latents.init": (1, D),
        "decode.image": (1, D),
    }
    for name, shape in expected.items():
        assert tuple(prior[name].shape) == shape, name
    for name in (
        "step.latents",
        "step.model.cond",
        "step.model.uncond",
        "step.guidance",
        "step.pred_x0",
        "step.next",
    ):
        assert tuple(prior[name, 1].shape) == (1, D), name
    assert prior["prompt.mask.cond"].dtype == torch.bool
    # the prior predicts the sample: x̂0 is its guided output, clipped as the scheduler clips it
    assert prior.steps[1].level.a == 0.0 and prior.steps[1].level.b == 1.0
    assert torch.equal(prior["step.pred_x0", 1], prior["step.guidance", 1].clamp(-10.0, 10.0))
    assert tuple(decoder["prompt.cond"].shape) == (1, D)
    assert tuple(decoder["step.model.cond", 0].shape) == (
        1,
        4,
        LATENT,
        LATENT,
    )  # ε only: the variance is not guided
    assert tuple(decoder["decode.image"].shape) == (1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    points = {p.name: p for p in cascade.hook_points()}
    assert points["decoder.input"].shape == "[2, B, D]" and "image_embeds" in points["decoder.input"].tensor
    assert (
        points["prior.step.model.cond"].tensor.startswith("x̂0_c")
        and points["prior.step.latents"].shape == "[B, D]"
    )
    assert points["decoder.step.model.cond"].shape == "[B, C, h, w]"
    assert "attention" not in prior.settings and "attention" not in decoder.settings
    assert not any(n.startswith("attn.") for n in points)  # no per-word maps in either model


# ---- files and widgets ----------------------------------------------------------------------------
def test_the_trace_saves_to_one_file_that_loads_and_forks(cascade, trace, tmp_path):
    path = tmp_path / "kandinsky.safetensors"
    trace.save(path)
    loaded = CascadeTrace.load(path, cascade=cascade)
    assert loaded.names == ("prior", "decoder")
    assert torch.equal(loaded["decoder.input"], trace["decoder.input"])
    assert torch.equal(loaded["prior.step.latents", 2], trace["prior.step.latents", 2])
    assert loaded.stages["prior"].previews.source == "embedding"  # grids of numbers, not decoded pictures
    assert loaded.stages["decoder"].previews.source == "vae"
    forked = loaded.fork("prior", 1)
    assert torch.equal(forked.stages["decoder"].image, trace.stages["decoder"].image)
    single = Trace.load(_save_stage(trace, tmp_path))
    assert single.settings["model"]["family"] == "kandinsky_prior" and tuple(single.image.shape) == (1, D)


def test_the_prior_stage_exports_an_html_page(trace, tmp_path):
    """``Trace.to_html`` of the prior: its embeddings drawn as grids (live, and from a file without previews)."""
    trace.stages["prior"].to_html(tmp_path / "live.html")
    trace.stages["prior"].save(tmp_path / "bare.safetensors", previews=False)
    Trace.load(tmp_path / "bare.safetensors").to_html(tmp_path / "loaded.html")
    for name in ("live.html", "loaded.html"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert text.count("data:image/png;base64,") >= 4 * STEPS, name  # x_t, x̂0, ε_c, ε̂ per step at least


def _save_stage(trace: CascadeTrace, tmp_path: Path) -> Path:
    path = tmp_path / "prior.safetensors"
    trace.stages["prior"].save(path)
    return path


def _errors(widget) -> str:
    return "".join(o.get("text", "") for o in widget.output.outputs)


def test_the_widgets_open_a_kandinsky_trace_with_a_stage_chooser(cascade, trace, tmp_path):
    from diffexplain.widgets import GuidanceLab, StepExplorer, TracePlayer

    explorer = StepExplorer(trace)
    assert explorer.stage == "decoder" and [v for _, v in explorer.stage_chooser.options] == [
        "prior",
        "decoder",
    ]
    assert "embedding" not in explorer.header.value
    assert "noise predicted with prompt" in explorer.panel_titles["eps_c"].value
    assert "U-Net" in explorer.help.value
    picture = explorer.images["x0"].value
    explorer.stage_chooser.value = "prior"
    assert _errors(explorer) == "" and explorer.trace is trace.stages["prior"]
    assert f"CLIP image embedding of {D} numbers, not a picture" in explorer.header.value
    # the panels and the help name what the prior predicts, not the decoder's noise
    assert "image embedding predicted with prompt" in explorer.panel_titles["eps_c"].value
    assert "noisy image embeddings entering" in explorer.panel_titles["xt"].value
    assert "the prior looks at the noisy image embeddings" in explorer.help.value
    assert "U-Net" not in explorer.help.value
    assert explorer.images["x0"].value != picture and explorer.channel_box.layout.display == "none"
    explorer.slider.value = 3
    assert _errors(explorer) == ""
    explorer.stage_chooser.value = "decoder"
    assert "noise predicted with prompt" in explorer.panel_titles["eps_c"].value

    path = tmp_path / "k.safetensors"
    trace.save(path)
    player = TracePlayer(path)
    assert _errors(player) == "" and "stages prior, decoder" in player.status.value
    player.explorer.stage_chooser.value = "prior"
    assert _errors(player.explorer) == "" and "not a picture" in player.explorer.header.value

    lab = GuidanceLab(cascade, PROMPT, num_inference_steps=3)
    assert _errors(lab) == "" and lab.stage == "prior" and "not a picture" in lab.caption.value
    assert lab.on.settings["model"]["family"] == "kandinsky_prior" and lab.off.settings["do_cfg"] is False
    lab.range.value = (1, 2)
    lab.guidance_off_range()
    assert _errors(lab) == "" and lab.ranged.forked_from == 1
    lab.stage_chooser.value = "decoder"
    assert _errors(lab) == "" and lab.on.settings["model"]["family"] == "kandinsky"
    assert lab.caption.layout.display == "none"


# ---- errors ---------------------------------------------------------------------------------------
def test_families_are_registered_and_picked_from_their_pipelines(pipes):
    assert (
        family_for_pipeline(pipes[0]) is KandinskyPrior and family_for_pipeline(pipes[1]) is KandinskyDecoder
    )
    assert FAMILIES["kandinsky_prior"] is KandinskyPrior and FAMILIES["kandinsky"] is KandinskyDecoder
    prior = Explainer.from_pipeline(pipes[0])
    assert prior.scheduler_names == ("unclip",) and prior.family.embedding_dim == D


def test_bad_input_is_named(pipes, cascade, trace):
    prior, decoder = (Explainer.from_pipeline(p, progress=False) for p in pipes)
    with pytest.raises(ValueError, match="draws from an image embedding and reads no prompt"):
        decoder.run(PROMPT, num_inference_steps=2)
    with pytest.raises(TypeError, match="takes no run settings of its own .*'decoder.input' hook"):
        decoder.run(PROMPT, image_embeds=torch.zeros(1, D))
    with pytest.raises(TypeError, match="the stage before it must be a Kandinsky 2.2 prior"):
        Cascade({"a": decoder, "b": decoder})
    with pytest.raises(TypeError, match="takes no previous stage's output"):
        Cascade({"decoder": decoder, "prior": prior})
    with pytest.raises(
        ValueError, match=r"'decoder.input' .* wrong shape: expected \(2, 1, 32\), given \(1, 32\)"
    ):
        cascade.run(PROMPT, seed=0, hooks={"decoder.input": lambda x, ctx: x[0]}, **SETTINGS)
    with pytest.raises(
        ValueError, match=r"image embeddings must be a tensor \[2, B, D\] = \[2, 1, 32\].*got \(1, 32\)"
    ):
        decoder.family.stage_inputs(torch.zeros(1, D), 1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, None, {})
    with pytest.raises(ValueError, match="a fork cannot add or remove one"):
        cascade.fork(trace, "prior", 1, negative_prompt="blurry")
    with pytest.raises(ValueError, match="not a picture but .* image embeddings"):
        trace.stages["prior"].images  # noqa: B018
    with pytest.raises(
        ValueError, match="prior makes image embeddings of 32 numbers but the decoder reads 16"
    ):
        unet = type(pipes[1].unet).from_config({**pipes[1].unet.config, "encoder_hid_dim": 16})
        Cascade(
            {
                "prior": prior,
                "decoder": Explainer(
                    family=KandinskyDecoder(unet=unet, movq=pipes[1].movq), scheduler=pipes[1].scheduler
                ),
            }
        )
    with pytest.raises(ValueError, match="encoder_hid_dim_type is None; expected 'image_proj'"):
        plain = type(pipes[1].unet).from_config(
            {
                **pipes[1].unet.config,
                "encoder_hid_dim_type": None,
                "addition_embed_type": None,
                "encoder_hid_dim": None,
            }
        )
        KandinskyDecoder(unet=plain, movq=pipes[1].movq)
    other_clip = type(pipes[0].text_encoder)(
        type(pipes[0].text_encoder.config).from_dict(
            {**pipes[0].text_encoder.config.to_dict(), "projection_dim": 8}
        )
    )
    with pytest.raises(ValueError, match="text_encoder.config.projection_dim is 8; expected the prior's 32"):
        KandinskyPrior(**{**dict(pipes[0].components), "text_encoder": other_clip})
    with pytest.raises(
        TypeError, match="prior must be a diffusers PriorTransformer; got UNet2DConditionModel"
    ):
        KandinskyPrior(**{**dict(pipes[0].components), "prior": pipes[1].unet})
    with pytest.raises(TypeError, match="missing: \\['image_encoder'\\]"):
        KandinskyPrior(prior=pipes[0].prior, text_encoder=pipes[0].text_encoder, tokenizer=pipes[0].tokenizer)


# ---- docs -----------------------------------------------------------------------------------------
def test_the_docs_page_lists_every_hook_point_as_the_code_describes_it(cascade):
    """The page's table (hook point | stage | tensor | shape | when) is the cascade's ``hook_points()``."""
    markdown = (DOCS / "kandinsky.md").read_text(encoding="utf-8")
    rows = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"`(prior|decoder)\.[a-z0-9_.]+`", cells[0]):
            rows.append((cells[0].strip("`"), cells[2], cells[3], cells[4]))
    expected = [
        (p.name, p.tensor, p.shape, "every step" if p.per_step else "once per run")
        for p in cascade.hook_points()
    ]
    assert rows == expected
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    assert "`KandinskyV22PriorPipeline`" in index and "](kandinsky.md)" in index
    assert "](kandinsky.md)" in (DOCS / "big-systems.md").read_text(encoding="utf-8")


def test_the_docs_example_runs(tmp_path):
    """The page's first code block runs as written (on the tiny parts)."""
    markdown = (DOCS / "kandinsky.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", markdown, re.S).group(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        namespace: dict = {}
        exec(compile(code, "kandinsky.md", "exec"), namespace)  # noqa: S102 - the docs' own example
    assert isinstance(namespace["trace"], CascadeTrace)


def test_building_the_tiny_pipelines_prints_no_torchvision_note():
    """diffusers' Kandinsky pipelines import CLIPImageProcessor, and transformers logs (to stderr, a red box
    in a notebook) that it falls back to its PIL backend without torchvision: the tiny parts silence that note."""
    import subprocess
    import sys

    code = (
        "from diffexplain.families.tiny_kandinsky import tiny_kandinsky_pipelines; tiny_kandinsky_pipelines()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "requires torchvision" not in done.stderr, done.stderr
