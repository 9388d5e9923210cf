"""Z-Image through the same loop: parity with ZImagePipeline bit for bit (s = 0, s > 0, a negative prompt,
a batch, the norm cap and truncation), bit-exact forks, the conventions (v after the sign, the model's time
1 − σ, w = s + 1), the text side as data (chat text, tokens, hidden_states[-2], the pipeline's list of
captions), hooks and trace files, attention maps of the unified layers, and the widgets on a Z-Image trace."""

from __future__ import annotations

import ipywidgets as W
import pytest
import torch
from diffusers import ZImagePipeline

from diffexplain import Explainer, Trace
from diffexplain.attention import edits
from diffexplain.families import ZImage, family_for_pipeline
from diffexplain.families.z_image import TURBO
from diffexplain.families.z_image_text import chat_text
from diffexplain.guiders import ZImageGuidance
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
from tests.tiny_zimage import ZIMAGE_MAX_SEQUENCE_LENGTH, tiny_zimage_parts, tiny_zimage_pipeline

PROMPT = "a red cube on the left of a blue sphere"
STEPS = 4
SIZE = 16  # px: latents [B, 16, 8, 8], 16 image tokens of 2×2 patches
OPTIONS = {"max_sequence_length": ZIMAGE_MAX_SEQUENCE_LENGTH, "height": SIZE, "width": SIZE}
TRUNCATED = ZImageGuidance(normalization=1.05, truncation=0.2)  # 1 − σ: 0, 0.1, 0.25, 0.5 at 4 steps


@pytest.fixture(scope="module")
def pipe() -> ZImagePipeline:
    return tiny_zimage_pipeline()


@pytest.fixture(scope="module")
def ex(pipe) -> Explainer:
    return Explainer.from_pipeline(pipe, progress=False)


@pytest.fixture(scope="module")
def guided(ex) -> Trace:
    return ex.run(
        PROMPT, num_inference_steps=STEPS, seed=5, guidance_scale=4.0, negative_prompt="blurry", **OPTIONS
    )


def pipeline_latents(pipe: ZImagePipeline, prompt, seed: int, **kwargs) -> torch.Tensor:
    """ZImagePipeline's final latents [B, 16, h, w] (output_type="latent")."""
    return pipe(
        prompt,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        **OPTIONS,
        **kwargs,
    ).images


# diffexplain's w is the classic scale, w = s + 1 for ZImagePipeline's s; the guider carries the pipeline's options
CASES = [
    ("s = 0, one branch", dict(guidance_scale=1.0), dict(guidance_scale=0.0)),
    ("s = 3", dict(guidance_scale=4.0), dict(guidance_scale=3.0)),
    ("s = 0.5, a negative prompt", dict(guidance_scale=1.5, negative_prompt="blurry"), dict(guidance_scale=0.5, negative_prompt="blurry")),
    ("s = 3, norm cap and truncation", dict(guidance_scale=4.0, guider=TRUNCATED), dict(guidance_scale=3.0, cfg_normalization=1.05, cfg_truncation=0.2)),
]  # fmt: skip


@pytest.mark.parametrize(("ours", "theirs"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_run_equals_the_pipeline_and_a_fork_replays_it_at_every_step(pipe, ex, ours, theirs):
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=3, decode=False, **OPTIONS, **ours)
    assert torch.equal(trace.final_latents, pipeline_latents(pipe, PROMPT, 3, **theirs))
    two_branches = ours["guidance_scale"] > 1
    assert trace.settings["do_cfg"] is two_branches and ("uncond" in trace.conditioning) is two_branches
    assert trace.settings["guider"]["name"] == "z_image"  # the family's default guider, or the one given
    for k in range(STEPS):
        assert torch.equal(ex.fork(trace, k).final_latents, trace.final_latents), k


def test_a_truncated_step_runs_the_cond_branch_alone_as_the_pipeline(ex):
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=3, guidance_scale=4.0, guider=TRUNCATED, **OPTIONS)
    truncated = [(1000 - t) / 1000 > 0.2 for t in trace.timesteps]
    assert any(truncated) and not all(truncated)
    for i, cut in enumerate(truncated):
        same = torch.equal(trace["step.model.uncond", i], trace["step.model.cond", i])
        assert same is cut, i  # the negative branch is not run there: it reads as the cond one
        if cut:
            assert torch.equal(trace["step.guidance", i], trace["step.model.cond", i])
    assert set(trace.steps[-1].attention) == {"cond@4x4", "uncond@4x4"}


def test_a_batch_with_negative_prompts_equals_the_pipeline(pipe, ex):
    prompts, negatives = [PROMPT, "a green triangle"], ["blurry", "a dark photo of a dog in the snow"]
    trace = ex.run(prompts, negative_prompt=negatives, guidance_scale=3.0, num_inference_steps=STEPS, seed=1, decode=False, **OPTIONS)  # fmt: skip
    expected = pipeline_latents(pipe, prompts, 1, negative_prompt=negatives, guidance_scale=2.0)
    assert torch.equal(trace.final_latents, expected)
    assert trace["step.pred_x0"].shape == (STEPS, 2, 16, 8, 8)
    unguided = ex.run(
        prompts, num_inference_steps=STEPS, seed=1, decode=False, **OPTIONS, **{"guidance_scale": 1.0}
    )
    assert torch.equal(unguided.final_latents, pipeline_latents(pipe, prompts, 1, guidance_scale=0.0))


def test_conventions_the_raw_output_and_the_models_time(ex, guided):
    conventions = guided.conventions
    assert conventions["model_output_sign"] == -1 and conventions["model_time"] == "(1000 − t)/1000"
    assert conventions["guidance_formula"] == "c + s·(c − u)" and conventions["classic_offset"] == 1.0
    assert conventions["guidance_scale"] == 4.0 and conventions["pipeline_guidance_scale"] == 3.0
    assert ex.family.conventions(ex.scheduler).pipeline_scale_of(TURBO["guidance_scale"]) == 0.0
    # what the transformer is given and returns, read at the model itself
    calls = []
    handle = ex.model.register_forward_hook(lambda m, args, out: calls.append((args, out)))
    try:
        trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=5, guidance_scale=4.0, negative_prompt="blurry", **OPTIONS)  # fmt: skip
    finally:
        handle.remove()
    assert torch.equal(trace.final_latents, guided.final_latents) and len(calls) == STEPS
    for i, ((latents, time, captions), out) in enumerate(calls):
        t = trace.timesteps[i]
        sigma = (
            float(trace.scalars("scheduler_sigma")[i])
            if "scheduler_sigma" in trace.steps[i].scalars
            else None
        )
        assert torch.equal(time, torch.full((2,), (1000 - t) / 1000, dtype=time.dtype))  # 1 − σ, both rows
        if sigma is not None:
            assert time[0].item() == pytest.approx(1 - sigma, abs=1e-6)
        assert len(latents) == 2 and latents[0].shape == (16, 1, 8, 8)  # a list with a frame axis, cond first
        raw = torch.stack([o.float() for o in out[0]]).squeeze(2)  # [2B, C, h, w], cond rows first
        assert torch.equal(trace["step.model.cond", i], -raw[:1])  # step.model.* = −(the raw output)
        assert torch.equal(trace["step.model.uncond", i], -raw[1:])
        assert torch.equal(trace.raw_model_output(i), raw[:1])  # what the transformer returned, as recorded
        assert [c.shape[0] for c in captions] == [int(trace["prompt.mask.cond"].sum()), int(trace["prompt.mask.uncond"].sum())]  # fmt: skip
    # x̂0 = x_t − σ·v holds with v after the sign: the last step's x̂0 is the picture
    torch.testing.assert_close(trace["step.pred_x0", STEPS - 1], trace.final_latents, rtol=1e-4, atol=1e-4)


def test_the_text_side_is_data(pipe, ex, guided):
    tokenizer = ex.family.parts["tokenizer"]
    # the chat text the LLM read, from the trace's ids; the template's own tokens marked
    ids, mask = guided["prompt.ids.cond"][0], guided["prompt.mask.cond"][0]
    assert ids.dtype == torch.int64 and mask.dtype == torch.bool
    assert tokenizer.decode(ids[mask]) == chat_text(tokenizer, PROMPT)
    assert chat_text(tokenizer, PROMPT) == f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    tokens = guided.tokens
    assert len(tokens) == ZIMAGE_MAX_SEQUENCE_LENGTH and {t.source for t in tokens} == {"qwen3"}
    assert [t.word for t in tokens if t.kind == "word"][:3] == ["a", "red", "cube"]
    assert tokens[0].text == "<|im_start|>" and tokens[0].kind == "special"
    assert sum(t.kind != "pad" for t in tokens) == int(mask.sum()) and tokens[-1].kind == "pad"
    # prompt.cond is the LLM's hidden_states[-2] at every position; the model reads the pipeline's list
    states = ex.family.parts["text_encoder"](
        input_ids=ids[None], attention_mask=mask[None], output_hidden_states=True
    )
    assert torch.equal(guided["prompt.cond"], states.hidden_states[-2])
    theirs, negatives = pipe.encode_prompt(PROMPT, negative_prompt="blurry", max_sequence_length=ZIMAGE_MAX_SEQUENCE_LENGTH)  # fmt: skip
    assert torch.equal(guided["prompt.cond"][0][mask], theirs[0])
    assert torch.equal(guided["prompt.uncond"][0][guided["prompt.mask.uncond"][0]], negatives[0])
    assert guided.settings["model"]["text_encoders"] == ["Qwen3Model"]
    assert guided.settings["model"]["text_encoder_layer"] == "hidden_states[-2]"


def test_hooks_replacements_and_run_settings(ex, guided):
    names = [p.name for p in ex.hook_points()]
    for name in ("prompt.mask.cond", "prompt.mask.uncond", "prompt.ids.cond", "prompt.ids.uncond"):
        assert name in names
    assert [n for n in names if n.startswith("attn.") and n.endswith("probs.cond")] == [
        "attn.layers.0.attention.probs.cond",
        "attn.layers.1.attention.probs.cond",
    ]
    # an identity replacement changes nothing; a mask hook that drops a word changes the picture
    same = ex.run(PROMPT, num_inference_steps=STEPS, seed=5, guidance_scale=4.0, negative_prompt="blurry",
                  hooks={"step.latents": lambda x, *, ctx: x.clone()}, **OPTIONS)  # fmt: skip
    assert torch.equal(same.final_latents, guided.final_latents) and len(same.replacements) == STEPS
    red = next(t.index for t in guided.tokens if t.word == "red")

    def drop_red(mask, *, ctx):
        mask = mask.clone()
        mask[:, red] = False
        return mask

    dropped = ex.run(PROMPT, num_inference_steps=STEPS, seed=5, guidance_scale=4.0, negative_prompt="blurry",
                     hooks={"prompt.mask.cond": drop_red}, **OPTIONS)  # fmt: skip
    assert not torch.equal(dropped.final_latents, guided.final_latents)
    assert [r.name for r in dropped.replacements] == ["prompt.mask.cond"]
    with pytest.raises(ValueError, match=r"prompt.mask.cond.*wrong dtype: expected torch.bool"):
        ex.run(PROMPT, num_inference_steps=1, seed=0, hooks={"prompt.mask.cond": lambda m, *, ctx: m.float()}, **OPTIONS)  # fmt: skip
    with pytest.raises(ValueError, match=r"step.latents.*wrong shape: expected \(1, 16, 8, 8\)"):
        ex.run(PROMPT, num_inference_steps=1, seed=0, hooks=[Hook("step.latents", lambda x, *, ctx: x[..., :4])], **OPTIONS)  # fmt: skip
    with pytest.raises(TypeError, match=r"cfg_truncation: Z-Image's guidance settings belong to its guider"):
        ex.run(PROMPT, num_inference_steps=1, cfg_truncation=0.5, **OPTIONS)
    with pytest.raises(ValueError, match="height .*multiple of 4"):
        ex.run(PROMPT, num_inference_steps=1, seed=0, max_sequence_length=48, height=18, width=16)
    with pytest.raises(ValueError, match=r"latents has shape \[1, 16, 4, 4\]; expected x_T \[1, 16, 8, 8\]"):
        ex.run(PROMPT, num_inference_steps=1, latents=torch.zeros(1, 16, 4, 4), **OPTIONS)


def test_reguide_and_trace_files(ex, guided, tmp_path):
    # reguide with the run's own guider is the step bit for bit; the classic formula to float precision
    assert torch.equal(guided.reguide(1, 4.0, guider=ZImageGuidance()).eps_guided, guided["step.guidance", 1])
    torch.testing.assert_close(
        guided.reguide(1, 4.0).eps_guided, guided["step.guidance", 1], rtol=1e-5, atol=1e-5
    )
    assert not torch.equal(guided.reguide(1, 2.0).eps_guided, guided["step.guidance", 1])
    path = tmp_path / "z_image.safetensors"
    guided.save(path)
    loaded = Trace.load(path, explainer=ex)
    assert loaded.settings["model"]["family"] == "z_image" and loaded.settings["guider"]["name"] == "z_image"
    assert loaded.conditioning["uncond"].keys() == {"embeds", "mask", "ids"}
    assert torch.equal(loaded["prompt.mask.cond"], guided["prompt.mask.cond"])
    assert torch.equal(loaded["step.pred_x0"], guided["step.pred_x0"])
    assert torch.equal(ex.fork(loaded, 2).final_latents, guided.final_latents)
    # a fork with a new prompt re-encodes it; one that turns guidance off runs one branch
    changed = ex.fork(guided, 1, prompt="a green triangle")
    assert not torch.equal(changed["prompt.ids.cond"], guided["prompt.ids.cond"])
    assert ex.fork(guided, 1, guidance_scale=1.0).settings["do_cfg"] is False


def test_the_family_is_picked_from_pipeline_parts_and_folder(pipe, tmp_path):
    assert family_for_pipeline(pipe) is ZImage
    parts = tiny_zimage_parts()
    scheduler = parts.pop("scheduler")
    built = Explainer(scheduler=scheduler, progress=False, **parts)
    assert isinstance(built.family, ZImage) and built.family.default_size() == (1024, 1024)
    pipe.save_pretrained(tmp_path / "z_image")
    loaded = Explainer.from_pretrained(tmp_path / "z_image", progress=False)
    assert isinstance(loaded.family, ZImage)
    a = built.run(PROMPT, num_inference_steps=2, seed=0, decode=False, **OPTIONS, **{"guidance_scale": 1.0})
    b = loaded.run(PROMPT, num_inference_steps=2, seed=0, decode=False, **OPTIONS, **{"guidance_scale": 1.0})
    torch.testing.assert_close(a.final_latents, b.final_latents, rtol=1e-5, atol=1e-5)
    turbo = built.run(PROMPT, seed=0, decode=False, **OPTIONS, **TURBO)
    assert len(turbo) == 9 and turbo.settings["do_cfg"] is False


# ---- attention maps -----------------------------------------------------------------------------------
def test_attention_maps_are_the_image_to_caption_block_of_the_unified_layers(ex):
    layers = ex.family.attention_layers()
    assert [layer.name for layer in layers] == ["layers.0.attention", "layers.1.attention"]
    point = "attn.layers.0.attention.probs.cond"
    inputs = []
    handle = layers[0].module.register_forward_pre_hook(lambda m, args, kwargs: inputs.append((args, kwargs)), with_kwargs=True)  # fmt: skip
    try:
        plain = ex.run(PROMPT, num_inference_steps=2, seed=0, attention_maps=False, **OPTIONS)
    finally:
        handle.remove()
    trace = ex.run(PROMPT, num_inference_steps=2, seed=0, keep=point, **OPTIONS)
    assert torch.equal(plain.final_latents, trace.final_latents)  # the processor's own output, maps or not
    # the block as softmax(QKᵀ/√d) over the whole row (16 image tokens padded to 32, then the caption)
    attn, (args, kwargs) = layers[0].module, inputs[0]
    x, freqs = args[0], kwargs["freqs_cis"]
    from diffexplain.families.z_image_attention import rotary

    q = rotary(attn.norm_q(attn.to_q(x).unflatten(-1, (2, -1))), freqs).transpose(1, 2)
    k = rotary(attn.norm_k(attn.to_k(x).unflatten(-1, (2, -1))), freqs).transpose(1, 2)
    probs = ((q @ k.transpose(-1, -2)) / 16**0.5).softmax(-1)[:1]  # [1, heads, L, L]: the cond row (first)
    mask = trace.conditioning["cond"]["mask"][0]
    length = int(mask.sum())
    block = trace[point, 0]
    assert block.shape == (1, 2, 16, ZIMAGE_MAX_SEQUENCE_LENGTH)
    torch.testing.assert_close(block[..., mask], probs[:, :, :16, 32 : 32 + length], rtol=1e-5, atol=1e-6)
    assert float(block[..., ~mask].abs().max()) == 0.0  # the template's padding is never seen
    maps = trace.attention_maps()
    assert maps.shape == (1, ZIMAGE_MAX_SEQUENCE_LENGTH, SIZE, SIZE)
    torch.testing.assert_close(maps.sum(1), torch.ones_like(maps[:, 0]), rtol=0, atol=1e-5)
    assert trace.attention("red").shape == (1, SIZE, SIZE)
    # reweight edits act on the block: 1 changes nothing, 0 removes the word
    same = ex.run(PROMPT, num_inference_steps=2, seed=0, hooks=edits.reweight("red", 1.0), **OPTIONS)
    assert torch.equal(same.final_latents, trace.final_latents)
    gone = ex.run(PROMPT, num_inference_steps=2, seed=0, hooks=edits.reweight("red", 0.0), **OPTIONS)
    assert not torch.equal(gone.final_latents, trace.final_latents)
    assert gone.attention("red").abs().max() == 0


def test_guided_maps_follow_the_loops_branch_order(ex, guided):
    assert set(guided.steps[0].attention) == {"cond@4x4", "uncond@4x4"}
    cond, uncond = guided.token_lists("cond")[0], guided.token_lists("uncond")[0]
    assert {t.word for t in uncond if t.kind == "word"} == {"blurry"}
    maps = guided.steps[0].attention
    for branch, tokens in (("cond", cond), ("uncond", uncond)):
        real = torch.tensor([t.kind != "pad" for t in tokens])
        total = maps[f"{branch}@4x4"][0].sum(0)
        torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-5)
        assert float(maps[f"{branch}@4x4"][0][~real].abs().max()) == 0.0


# ---- widgets ------------------------------------------------------------------------------------------
def texts(widget: W.Widget) -> str:
    """Every HTML text inside a widget, recursively."""
    found = [widget.value] if isinstance(widget, W.HTML) else []
    for child in getattr(widget, "children", ()):
        found.append(texts(child))
    return " ".join(found)


def errors(widget) -> str:
    return "".join(o.get("text", "") for o in widget.output.outputs)


def test_widgets_open_a_z_image_trace(ex, guided, tmp_path):
    explorer = StepExplorer(guided)
    assert errors(explorer) == ""
    words = texts(explorer)
    assert "velocity predicted with prompt" in words and "the transformer" in words
    before = explorer.images["x0"].value
    explorer.slider.value = 2
    assert errors(explorer) == "" and explorer.images["x0"].value != before
    path = tmp_path / "z_image.safetensors"
    guided.save(path)
    assert errors(TracePlayer(Trace.load(path))) == ""
    page = tmp_path / "page.html"
    guided.to_html(page)
    assert "velocity" in page.read_text(encoding="utf-8")


def test_guidance_lab_on_z_image_reguides_without_a_model_call(ex):
    widget = GuidanceLab(ex, PROMPT, num_inference_steps=3)
    assert errors(widget) == ""
    assert widget.off.settings["do_cfg"] is False and widget.on.settings["do_cfg"] is True
    calls = []
    handle = ex.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        before = widget.strip.value
        widget.scale.value = widget.scale.value + 2
    finally:
        handle.remove()
    assert errors(widget) == "" and calls == [] and widget.strip.value != before


@pytest.mark.parametrize("make", ["noise_lab", "prompt_swap", "forward_process", "attention_maps"])
def test_the_other_widgets_build_on_z_image(ex, make):
    widget = {
        "noise_lab": lambda: NoiseLab(ex, PROMPT, num_inference_steps=3),
        "prompt_swap": lambda: PromptSwap(ex, PROMPT, "a blue square", num_inference_steps=3),
        "forward_process": lambda: ForwardProcess(ex),
        "attention_maps": lambda: AttentionMaps(ex.run(PROMPT, num_inference_steps=2, seed=0, **OPTIONS)),
    }[make]()
    assert errors(widget) == ""


def test_the_docs_page_lists_the_familys_hook_points_and_is_in_the_nav():
    from pathlib import Path

    from diffexplain.names import markdown_table

    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "families" / "z-image.md").read_text(encoding="utf-8")
    assert f"<!-- generated: points-z_image -->\n{markdown_table(ZImage.extra_points)}\n<!-- end" in page
    assert "families/z-image.md" in (root / "mkdocs.yml").read_text(encoding="utf-8")


def test_bfloat16_weights_keep_float32_latents_and_the_picture_decodes_as_the_pipeline():
    pipe = tiny_zimage_pipeline().to(torch.bfloat16)  # as real weights run: the latents stay float32
    ex = Explainer.from_pipeline(pipe, progress=False)
    trace = ex.run(PROMPT, num_inference_steps=2, seed=3, guidance_scale=4.0, **OPTIONS)
    expected = pipe(PROMPT, num_inference_steps=2, guidance_scale=3.0, output_type="latent", generator=torch.Generator().manual_seed(3), **OPTIONS).images  # fmt: skip
    assert trace.final_latents.dtype == torch.float32 and torch.equal(trace.final_latents, expected)
    assert trace["prompt.cond"].dtype == torch.bfloat16
    picture = pipe(PROMPT, num_inference_steps=2, guidance_scale=3.0, output_type="pt", generator=torch.Generator().manual_seed(3), **OPTIONS).images  # fmt: skip
    ours = (trace["decode.image"].float() / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(ours, picture.float(), rtol=0, atol=1e-2)


def test_a_prompt_past_the_llms_tokens_warns_with_the_words_cut(ex):
    long = PROMPT + " and a green triangle above a yellow circle"
    with pytest.warns(
        UserWarning, match=r"Qwen3Model\) reads at most 12 tokens .* drops 'and a green triangle above"
    ):
        trace = ex.run(long, num_inference_steps=1, seed=0, guidance_scale=1.0, height=SIZE, width=SIZE, max_sequence_length=16)  # fmt: skip
    tokenizer = ex.family.parts["tokenizer"]
    assert (
        tokenizer.decode(trace["prompt.ids.cond"][0]) == f"<|im_start|>user\n{PROMPT}"
    )  # the template's start kept
