"""FLUX.2 through the same loop: parity with Flux2KleinPipeline (Base with CFG, distilled without) and
Flux2Pipeline (dev, embedded g) bit for bit, with attention maps on; bit-exact forks at every step; the
patchified latents as the image-shaped view; the LLM's layer stack as a hook point that feeds prompt.cond;
the chat template's tokens marked; conventions; attention maps and edits; trace files; the family's pick;
the widgets and the HTML page on a FLUX.2 trace."""

from __future__ import annotations

import json
import re
import warnings

import ipywidgets as W
import pytest
import torch
from diffusers import Flux2KleinPipeline, Flux2Pipeline

from diffexplain import Explainer, Trace
from diffexplain.attention import edits
from diffexplain.families import Flux2Dev, Flux2Klein, family_for_pipeline
from diffexplain.families.flux2_latents import pack, unpack, unpatchify
from diffexplain.families.flux2_text import flatten_layers
from diffexplain.hooks import Hook
from diffexplain.widgets import (
    AttentionMaps,
    ForwardProcess,
    GuidanceLab,
    NoiseLab,
    PromptSwap,
    StepExplorer,
    TracePlayer,
)
from tests.conftest import PROMPT
from tests.tiny_flux2 import (
    MAX_SEQUENCE_LENGTH,
    tiny_dev_parts,
    tiny_dev_pipeline,
    tiny_klein_parts,
    tiny_klein_pipeline,
)

STEPS = 3
SIZE = 32  # px: x_t [B, 16, 8, 8], 64 image tokens
OPTIONS = {"max_sequence_length": MAX_SEQUENCE_LENGTH}
SHAPE = (16, 8, 8)
DISTILLED_NOTICE = "ignore:FLUX.2 .klein. distilled"
DEV_NOTICE = "ignore:FLUX.2 .dev.: guidance_scale > 1 is true CFG"


@pytest.fixture(scope="module")
def base() -> Flux2KleinPipeline:
    return tiny_klein_pipeline()


@pytest.fixture(scope="module")
def distilled() -> Flux2KleinPipeline:
    return tiny_klein_pipeline(distilled=True)


@pytest.fixture(scope="module")
def dev() -> Flux2Pipeline:
    return tiny_dev_pipeline()


@pytest.fixture(scope="module")
def ex(base) -> Explainer:
    return Explainer.from_pipeline(base, progress=False)


@pytest.fixture(scope="module")
def ex_dev(dev) -> Explainer:
    return Explainer.from_pipeline(dev, progress=False)


def pipeline_latents(pipe, prompt, seed: int, steps: int = STEPS, **kwargs) -> torch.Tensor:
    """The pipeline's latents after its last step, [B, C, h, w] (the packed tokens the loop ends with)."""
    seen = []

    def keep(pipe, i, t, tensors):
        seen.append(tensors["latents"])
        return {}

    pipe(
        prompt=prompt,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        height=SIZE,
        width=SIZE,
        callback_on_step_end=keep,
        **OPTIONS,
        **kwargs,
    )
    return unpack(seen[-1], SIZE // 4, SIZE // 4)


def negative_embeds(pipe, negative):
    return pipe.encode_prompt(negative, max_sequence_length=MAX_SEQUENCE_LENGTH)[0]


def assert_forks_replay(explainer: Explainer, trace: Trace) -> None:
    for k in range(len(trace)):
        forked = explainer.fork(trace, k)
        assert torch.equal(forked.final_latents, trace.final_latents), k


# ---- parity and forks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("w", [4.0, 1.0])
def test_klein_base_equals_the_pipeline_with_and_without_cfg_and_forks_replay(base, ex, w):
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=3, guidance_scale=w, decode=False, **OPTIONS)
    assert torch.equal(trace.final_latents, pipeline_latents(base, PROMPT, 3, guidance_scale=w))
    assert trace.settings["do_cfg"] is (w > 1) and trace.final_latents.shape == (1, *SHAPE)
    assert all(("step.model.uncond" in step.tensors) is (w > 1) for step in trace.steps)
    assert trace.steps[0].attention  # the default: maps on, and still bit for bit
    assert_forks_replay(ex, trace)


def test_klein_base_negative_prompts_and_a_batch_equal_the_pipeline(base, ex):
    prompts = [PROMPT, "a blue circle"]
    trace = ex.run(
        prompts, negative_prompt=["green", "red"], num_inference_steps=STEPS, seed=1, decode=False, **OPTIONS
    )
    expected = pipeline_latents(
        base, prompts, 1, guidance_scale=4.0, negative_prompt_embeds=negative_embeds(base, ["green", "red"])
    )
    assert torch.equal(trace.final_latents, expected) and trace["step.pred_x0"].shape == (STEPS, 2, *SHAPE)
    # the pipeline's own latent output is the VAE's space: x·σ_bn + μ_bn, unpatchified
    adapter = ex.family.vae_adapter()
    mean, std = adapter.statistics(trace.final_latents)
    out = base(
        prompt=prompts,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(1),
        output_type="latent",
        negative_prompt_embeds=negative_embeds(base, ["green", "red"]),
        height=SIZE,
        width=SIZE,
        **OPTIONS,
    ).images
    assert torch.equal(out, unpatchify(trace.final_latents * std + mean)) and out.shape == (2, 4, 16, 16)


def test_klein_distilled_runs_without_cfg_and_w_above_1_says_what_it_does(distilled):
    ex = Explainer.from_pipeline(distilled, progress=False)
    assert ex.family.is_distilled and ex.family.default_steps == 4 and ex.family.default_guidance_scale == 1.0
    trace = ex.run(PROMPT, seed=2, decode=False, **OPTIONS)  # its defaults: 4 steps, one branch
    assert trace.settings["num_inference_steps"] == 4 and trace.settings["do_cfg"] is False
    # the pipeline ignores its guidance_scale (default 4) on a distilled klein: the same picture
    assert torch.equal(trace.final_latents, pipeline_latents(distilled, PROMPT, 2, steps=4))
    assert_forks_replay(ex, trace)
    with pytest.warns(
        UserWarning, match=r"ignores guidance_scale .* runs CFG anyway .* leave guidance_scale at 1"
    ):
        guided = ex.run(PROMPT, num_inference_steps=2, seed=2, guidance_scale=3.0, **OPTIONS)
    assert guided.settings["do_cfg"] is True and "step.model.uncond" in guided.steps[0].tensors
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per Explainer; klein Base never warns
        ex.run(PROMPT, num_inference_steps=1, seed=2, guidance_scale=3.0, **OPTIONS)
        Explainer.from_pipeline(tiny_klein_pipeline(), progress=False).run(
            PROMPT, num_inference_steps=1, seed=0, **OPTIONS
        )
    assert "ignored" in guided.conventions["pipeline_scale"]


@pytest.mark.parametrize("g", [None, 2.5])
def test_dev_equals_the_pipeline_with_its_embedded_guidance(dev, ex_dev, g):
    prompts = [PROMPT, "a blue circle"]
    ours = {} if g is None else {"embedded_guidance": g}
    trace = ex_dev.run(prompts, num_inference_steps=STEPS, seed=4, decode=False, **OPTIONS, **ours)
    expected = pipeline_latents(dev, prompts, 4, guidance_scale=4.0 if g is None else g)
    assert torch.equal(trace.final_latents, expected) and trace.settings["do_cfg"] is False
    assert trace["prompt.guidance.cond"].tolist() == [4.0 if g is None else g] * 2
    assert_forks_replay(ex_dev, trace)


def test_dev_true_cfg_is_extra_and_says_so_and_g_is_a_hook_point(ex_dev):
    fresh = Explainer.from_pipeline(ex_dev.family.pipeline, progress=False)
    with pytest.warns(UserWarning, match=r"true CFG here .*pass embedded_guidance=g"):
        guided = fresh.run(PROMPT, num_inference_steps=2, seed=0, guidance_scale=3.0, **OPTIONS)
    assert guided.conventions["pipeline_scale"].startswith("none")
    assert torch.equal(guided.reguide(1, 3.0).eps_guided, guided["step.guidance", 1])
    assert_forks_replay(fresh, guided)
    low = ex_dev.run(PROMPT, num_inference_steps=2, seed=0, embedded_guidance=1.0, **OPTIONS)
    hooked = ex_dev.run(
        PROMPT,
        num_inference_steps=2,
        seed=0,
        hooks={"prompt.guidance.cond": lambda g, *, ctx: torch.full_like(g, 1.0)},
        **OPTIONS,
    )
    assert torch.equal(hooked.final_latents, low.final_latents)
    with pytest.raises(ValueError, match="embedded_guidance must be a"):
        ex_dev.run(PROMPT, num_inference_steps=1, embedded_guidance=-1.0, **OPTIONS)
    with pytest.raises(TypeError, match=r"FLUX.2 \[klein\] takes no run setting embedded_guidance"):
        Explainer.from_pipeline(tiny_klein_pipeline(), progress=False).run(PROMPT, embedded_guidance=2.0)


# ---- layout and hooks ---------------------------------------------------------------------------------
def test_every_hook_sees_the_patchified_latents_and_the_model_reads_them_as_tokens(ex):
    seen: dict[str, tuple[int, ...]] = {}
    names = ["latents.init", "step.latents", "step.model.cond", "step.model.uncond"]
    names += ["step.guidance", "step.pred_x0", "step.next"]
    tokens = []
    handle = ex.model.register_forward_pre_hook(
        lambda module, args, kwargs: tokens.append(kwargs["hidden_states"]), with_kwargs=True
    )
    try:
        trace = ex.run(
            PROMPT,
            num_inference_steps=STEPS,
            seed=4,
            hooks={
                name: lambda x, *, ctx: seen.setdefault(ctx.name, tuple(x.shape)) and None for name in names
            },
            **OPTIONS,
        )
    finally:
        handle.remove()
    assert seen == {name: (1, *SHAPE) for name in names}
    assert trace["decode.image"].shape == (1, 3, SIZE, SIZE)
    assert len(tokens) == 2 * STEPS and tokens[0].shape == (1, 64, 16)  # one call per branch
    for i in range(STEPS):
        assert torch.equal(tokens[2 * i], pack(trace["step.latents", i]))
    # x̂0 at the last step is the final latents (to rounding): x̂0 = x_t − σ·v, σ_N = 0
    torch.testing.assert_close(trace["step.pred_x0", STEPS - 1], trace.final_latents, rtol=1e-5, atol=1e-5)


def test_decoding_is_the_pipelines_picture(base, ex):
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=5, **OPTIONS)
    picture = base(
        prompt=PROMPT,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(5),
        output_type="pt",
        height=SIZE,
        width=SIZE,
        **OPTIONS,
    ).images
    torch.testing.assert_close((trace["decode.image"] / 2 + 0.5).clamp(0, 1), picture, rtol=0, atol=1e-6)


def test_the_layer_stack_is_a_hook_point_that_feeds_the_image(ex):
    trace = ex.run(PROMPT, num_inference_steps=2, seed=6, decode=False, **OPTIONS)
    layers = trace["prompt.layers.cond"]
    assert layers.shape == (1, 3, MAX_SEQUENCE_LENGTH, 16) and trace.settings["options"][
        "text_encoder_out_layers"
    ] == [
        9,
        18,
        27,
    ]
    assert torch.equal(trace["prompt.cond"], flatten_layers(layers))
    names = [p.name for p in ex.hook_points()]
    assert names.index("prompt.layers.cond") < names.index("prompt.cond")
    # reordering the stack by a hook is the same as asking for the layers in that order
    asked = ex.run(
        PROMPT, num_inference_steps=2, seed=6, decode=False, text_encoder_out_layers=[27, 18, 9], **OPTIONS
    )
    flip = lambda x, *, ctx: x.flip(1).contiguous()  # noqa: E731
    flipped = ex.run(
        PROMPT,
        num_inference_steps=2,
        seed=6,
        decode=False,
        hooks={"prompt.layers.cond": flip, "prompt.layers.uncond": flip},
        **OPTIONS,
    )
    assert torch.equal(flipped["prompt.cond"], asked["prompt.cond"])
    assert torch.equal(flipped["prompt.uncond"], asked["prompt.uncond"])
    assert torch.equal(flipped.final_latents, asked.final_latents)
    assert not torch.equal(flipped.final_latents, trace.final_latents)
    assert [r.name for r in flipped.replacements] == ["prompt.layers.cond", "prompt.layers.uncond"]
    # a fork keeps the source's conditioning, hooked layers included; prompt.cond's own hooks come after
    assert torch.equal(ex.fork(flipped, 1).final_latents, flipped.final_latents)
    both = ex.run(
        PROMPT,
        num_inference_steps=2,
        seed=6,
        decode=False,
        hooks={
            "prompt.layers.cond": lambda x, *, ctx: x.flip(1).contiguous(),
            "prompt.cond": lambda x, *, ctx: torch.zeros_like(x),
        },
        **OPTIONS,
    )
    assert float(both["prompt.cond"].abs().max()) == 0.0
    with pytest.raises(
        ValueError, match=r"prompt.layers.cond.*wrong shape.*\(1, 3, 48, 16\) -> \(1, 2, 48, 16\)"
    ):
        ex.run(
            PROMPT, num_inference_steps=1, hooks={"prompt.layers.cond": lambda x, *, ctx: x[:, :2]}, **OPTIONS
        )
    for bad, why in (([9, 18], "pick 3 layers"), ([9, 18, 28], "28 is not a layer"), (5, "non-empty list")):
        with pytest.raises(ValueError, match=why):
            ex.run(PROMPT, num_inference_steps=1, text_encoder_out_layers=bad, **OPTIONS)


def test_the_chat_template_is_recorded_and_its_tokens_are_marked(ex, ex_dev):
    trace = ex.run(PROMPT, num_inference_steps=1, seed=0, **OPTIONS)
    template = trace.settings["model"]["chat_template"]
    assert template == "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    tokens = trace.tokens
    assert (
        len(tokens) == MAX_SEQUENCE_LENGTH
        and tokens[0].text == "<|im_start|>"
        and tokens[0].kind == "template"
    )
    words = [t.word for t in tokens if t.kind == "word"]
    assert words[:2] == ["a", "red"] and "square" in words
    kinds = [t.kind for t in tokens]
    assert kinds.index("word") > 0 and "pad" in kinds and kinds[kinds.index("pad") - 1] == "template"
    # the text the tokens spell is the chat text the pipeline encodes
    tokenizer = ex.tokenizer
    spelled = tokenizer.convert_tokens_to_string([t.text for t in tokens if t.kind != "pad"])
    assert spelled == template.replace("{prompt}", PROMPT) == ex.family.chat_text(PROMPT)
    dev_template = ex_dev.family.describe()["chat_template"]
    assert dev_template.startswith("<s>[SYSTEM_PROMPT]You are an AI") and dev_template.endswith(
        "[INST]{prompt}[/INST]"
    )


# ---- conventions, files, guidance ---------------------------------------------------------------------
def test_conventions_reguide_and_trace_files(ex, tmp_path):
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=5, **OPTIONS)
    conventions = trace.conventions
    assert conventions["prediction"] == "flow" and conventions["model_time"] == "σ = t/1000"
    assert (
        conventions["guidance_formula"].startswith("v_u + w·(v_c − v_u)")
        and conventions["guidance_scale"] == 4.0
    )
    assert torch.equal(trace.reguide(1, 4.0).eps_guided, trace["step.guidance", 1])
    assert not torch.equal(trace.reguide(1, 2.0).eps_guided, trace["step.guidance", 1])
    path = tmp_path / "flux2.safetensors"
    trace.save(path)
    loaded = Trace.load(path, explainer=ex)
    assert loaded.settings["model"]["family"] == "flux2_klein" and loaded.conventions == conventions
    assert list(loaded.conditioning["uncond"]) == ["layers", "embeds"]
    assert torch.equal(loaded["prompt.layers.cond"], trace["prompt.layers.cond"])
    assert torch.equal(ex.fork(loaded, 1).final_latents, trace.final_latents)


def test_the_family_is_picked_from_pipelines_parts_and_folders(base, distilled, dev, tmp_path):
    assert family_for_pipeline(base) is Flux2Klein and family_for_pipeline(dev) is Flux2Dev
    for make, family in ((tiny_klein_parts, Flux2Klein), (tiny_dev_parts, Flux2Dev)):
        parts = make()
        scheduler = parts.pop("scheduler")
        built = Explainer(scheduler=scheduler, progress=False, **parts)
        assert type(built.family) is family and built.family.default_size() == (
            256,
            256,
        )  # 128 × the VAE scale 2
    assert Flux2Klein(**tiny_klein_parts()).is_distilled is False
    for pipe, family in ((distilled, Flux2Klein), (dev, Flux2Dev)):
        pipe.save_pretrained(tmp_path / family.name)
        loaded = Explainer.from_pretrained(tmp_path / family.name, progress=False)
        assert type(loaded.family) is family
    assert Explainer.from_pretrained(tmp_path / "flux2_klein", progress=False).family.is_distilled is True
    with pytest.raises(ValueError, match="is_distilled=False, but the pipeline's config says True"):
        Flux2Klein(pipeline=distilled, is_distilled=False, **tiny_klein_parts())


# ---- attention maps -----------------------------------------------------------------------------------
def test_joint_attention_maps_per_token_and_edits(ex):
    layers = ex.family.attention_layers()
    assert [(layer.name, layer.kind) for layer in layers] == [("transformer_blocks.0.attn", "joint")]
    trace = ex.run(PROMPT, num_inference_steps=2, seed=0, decode=False, keep="attn.*.probs.cond", **OPTIONS)
    assert set(trace.steps[0].attention) == {"cond@8x8", "uncond@8x8"}
    block = trace["attn.transformer_blocks.0.attn.probs.cond", 0]
    assert block.shape == (1, 2, 64, MAX_SEQUENCE_LENGTH) and (block.sum(-1) < 1).all()
    maps = trace.attention_maps()
    assert maps.shape == (1, MAX_SEQUENCE_LENGTH, SIZE, SIZE)  # at the picture's size
    torch.testing.assert_close(maps.sum(1), torch.ones_like(maps[:, 0]), rtol=0, atol=1e-5)
    assert trace.steps[0].attention["cond@8x8"].shape == (1, MAX_SEQUENCE_LENGTH, 8, 8)
    same = ex.run(
        PROMPT, num_inference_steps=2, seed=0, decode=False, hooks=edits.reweight("red", 1.0), **OPTIONS
    )
    assert torch.equal(same.final_latents, trace.final_latents)
    gone = ex.run(
        PROMPT, num_inference_steps=2, seed=0, decode=False, hooks=edits.reweight("red", 0.0), **OPTIONS
    )
    assert not torch.equal(gone.final_latents, trace.final_latents)
    assert gone.attention("red").abs().max() == 0


# ---- widgets and the page -----------------------------------------------------------------------------
def texts(widget: W.Widget) -> str:
    found = [widget.value] if isinstance(widget, W.HTML) else []
    for child in getattr(widget, "children", ()):
        found.append(texts(child))
    return " ".join(found)


def errors(widget) -> str:
    return "".join(o.get("text", "") for o in widget.output.outputs)


@pytest.fixture(scope="module")
def ex_widgets(base) -> Explainer:
    """The Base explainer with a short chat text by default (the widgets run with the defaults)."""
    return Explainer.from_pipeline(base, progress=False, defaults=dict(OPTIONS))


def test_widgets_and_the_page_open_a_flux2_trace(ex_widgets, tmp_path):
    trace = ex_widgets.run(PROMPT, num_inference_steps=3, seed=0)
    explorer = StepExplorer(trace)
    assert errors(explorer) == ""
    words = texts(explorer)
    assert "velocity predicted with prompt" in words and "the transformer" in words
    before = explorer.images["x0"].value
    explorer.slider.value = 2
    assert errors(explorer) == "" and explorer.images["x0"].value != before
    path = tmp_path / "flux2.safetensors"
    trace.save(path)
    assert errors(TracePlayer(Trace.load(path))) == ""
    page = trace.to_html(tmp_path / "page.html").read_text(encoding="utf-8")
    found = re.search(r'<script id="dx-data" type="application/json">(.*?)</script>', page, re.S)
    data = json.loads(found.group(1))
    assert len(data["steps"]) == 3 and data["cfg"] and all(data["steps"][0]["img"].values())
    assert "velocity" in page and data["final"].startswith("data:image/png;base64,")


@pytest.mark.parametrize(
    "make", ["guidance_lab", "noise_lab", "prompt_swap", "forward_process", "attention_maps"]
)
def test_the_other_widgets_build_on_flux2(ex_widgets, make):
    widget = {
        "guidance_lab": lambda: GuidanceLab(ex_widgets, PROMPT, num_inference_steps=2),
        "noise_lab": lambda: NoiseLab(ex_widgets, PROMPT, num_inference_steps=2),
        "prompt_swap": lambda: PromptSwap(ex_widgets, PROMPT, "a blue square", num_inference_steps=2),
        "forward_process": lambda: ForwardProcess(ex_widgets),
        "attention_maps": lambda: AttentionMaps(ex_widgets.run(PROMPT, num_inference_steps=2, seed=0)),
    }[make]()
    assert errors(widget) == ""


def test_a_hook_on_step_next_reaches_the_next_model_call_in_place(ex):
    def left_half_zero(x, *, ctx):
        x = x.clone()
        x[..., : x.shape[-1] // 2] = 0
        return x

    plain = ex.run(PROMPT, num_inference_steps=STEPS, seed=6, decode=False, **OPTIONS)
    hooked = ex.run(
        PROMPT,
        num_inference_steps=STEPS,
        seed=6,
        decode=False,
        hooks=[Hook("step.next", left_half_zero, steps=[0])],
        **OPTIONS,
    )
    assert torch.equal(hooked["step.latents", 1], hooked["step.next", 0])
    assert float(hooked["step.latents", 1][..., :4].abs().max()) == 0.0
    forked = ex.fork(plain, 1, latents=hooked["step.latents", 1])
    assert torch.equal(forked.final_latents, hooked.final_latents)
    again = ex.run(
        PROMPT, num_inference_steps=STEPS, seed=0, decode=False, latents=plain["latents.init"], **OPTIONS
    )
    assert torch.equal(again.final_latents, plain.final_latents)
    with pytest.raises(ValueError, match=r"latents has shape \[1, 64, 16\] \(the pipeline's packed tokens"):
        ex.run(PROMPT, num_inference_steps=1, latents=pack(plain["latents.init"]), **OPTIONS)
