"""Chroma through the same loop: parity with ChromaPipeline (CFG on and off, negative prompts, a batch of
two, attention maps on), bit-exact forks at every step, the text mask as a hook point, joint attention
maps under the mask, reweight edits, trace files, reguide, conventions, the family's pick, and every
widget and the HTML page on a Chroma trace."""

from __future__ import annotations

import ipywidgets as W
import pytest
import torch
from diffusers import ChromaPipeline

from diffexplain import Explainer, Trace, interventions
from diffexplain.attention import edits
from diffexplain.families import Chroma, family_for_pipeline
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
from tests.tiny_chroma import CHROMA_MAX_SEQUENCE_LENGTH, tiny_chroma_parts, tiny_chroma_pipeline

STEPS = 3
SIZE = 16  # px: latents [B, 4, 8, 8] unpacked, [B, 16, 16] packed
OPTIONS = {"max_sequence_length": CHROMA_MAX_SEQUENCE_LENGTH}


@pytest.fixture(scope="module")
def pipe() -> ChromaPipeline:
    return tiny_chroma_pipeline()


@pytest.fixture(scope="module")
def ex(pipe) -> Explainer:
    return Explainer.from_pipeline(pipe, progress=False)


def pipeline_latents(pipe: ChromaPipeline, prompt, seed: int, **kwargs) -> torch.Tensor:
    """ChromaPipeline's final latents, unpacked to [B, C, h, w] with the pipeline's own ``_unpack_latents``."""
    packed = pipe(
        prompt,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        height=SIZE,
        width=SIZE,
        **OPTIONS,
        **kwargs,
    ).images
    return pipe._unpack_latents(packed, SIZE, SIZE, pipe.vae_scale_factor)


CASES = [
    ("guidance off", dict(guidance_scale=1.0), dict(guidance_scale=1.0)),
    ("default w = 5, empty negative", dict(), dict()),
    (
        "a negative prompt",
        dict(guidance_scale=3.0, negative_prompt="a blue square"),
        dict(guidance_scale=3.0, negative_prompt="a blue square"),
    ),
]


@pytest.mark.parametrize(("ours", "theirs"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_run_equals_the_pipeline_and_forks_replay_it_at_every_step(pipe, ex, ours, theirs):
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=3, decode=False, **OPTIONS, **ours)
    assert torch.equal(trace.final_latents, pipeline_latents(pipe, PROMPT, 3, **theirs))
    two_branches = ours.get("guidance_scale", 5.0) > 1
    assert trace.settings["do_cfg"] is two_branches and trace.settings["guidance_scale"] == ours.get(
        "guidance_scale", 5.0
    )
    assert all(("step.model.uncond" in step.tensors) is two_branches for step in trace.steps)
    assert trace.steps[0].attention  # maps are on by default, and the run is still bit for bit
    for k in range(STEPS):
        forked = ex.fork(trace, k)
        assert torch.equal(forked.final_latents, trace.final_latents), k
    # x̂0 of the last step is the picture, to rounding (flow matching: x̂0 = x_t − σ·v, σ → 0)
    last = trace["step.pred_x0", STEPS - 1]
    assert (last - trace.final_latents).abs().max() < 1e-4 * max(1.0, float(last.abs().max()))


def test_batch_of_two_with_negative_prompts_equals_the_pipeline(pipe, ex):
    prompts = [PROMPT, "a blue circle"]
    trace = ex.run(
        prompts,
        negative_prompt=["green", "red"],
        guidance_scale=4.0,
        num_inference_steps=STEPS,
        seed=1,
        decode=False,
        **OPTIONS,
    )
    expected = pipeline_latents(pipe, prompts, 1, negative_prompt=["green", "red"], guidance_scale=4.0)
    assert torch.equal(trace.final_latents, expected)
    assert trace["step.pred_x0"].shape == (STEPS, 2, 4, 8, 8)
    # each prompt's mask keeps its tokens and exactly one pad token: "a blue circle" → ▁a ▁blue ▁circle </s> <pad>
    mask = trace["prompt.mask.cond"]
    assert mask.shape == (2, CHROMA_MAX_SEQUENCE_LENGTH) and mask[1].tolist()[:6] == [1, 1, 1, 1, 1, 0]
    tokens = ex.family.parts["tokenizer"](prompts, padding="max_length", max_length=16).attention_mask
    assert (mask.sum(1) == torch.tensor(tokens).sum(1) + 1).all()
    assert trace["prompt.mask.uncond"].sum(1).tolist() == [3.0, 3.0]  # ▁green </s> <pad>


def test_the_text_mask_is_a_hook_point_the_transformer_reads(ex):
    names = [p.name for p in ex.hook_points()]
    assert {"prompt.mask.cond", "prompt.mask.uncond"} <= set(names)
    assert not {"prompt.pooled.cond", "prompt.guidance.cond"} & set(names)  # no CLIP, no guidance embedding
    plain = ex.run(PROMPT, num_inference_steps=2, seed=0, decode=False, **OPTIONS)
    same = ex.run(
        PROMPT,
        num_inference_steps=2,
        seed=0,
        decode=False,
        hooks={"prompt.mask.cond": lambda m, *, ctx: m.clone()},
        **OPTIONS,
    )
    assert torch.equal(same.final_latents, plain.final_latents)
    opened = ex.run(
        PROMPT,
        num_inference_steps=2,
        seed=0,
        decode=False,
        hooks={"prompt.mask.cond": lambda m, *, ctx: torch.ones_like(m)},
        **OPTIONS,
    )
    assert not torch.equal(opened.final_latents, plain.final_latents)
    assert [r.name for r in opened.replacements] == ["prompt.mask.cond"]
    with pytest.raises(ValueError, match=r"prompt\.mask\.cond"):
        ex.run(
            PROMPT, num_inference_steps=1, hooks={"prompt.mask.cond": lambda m, *, ctx: m[:, :3]}, **OPTIONS
        )
    # hooks on the loop's points see unpacked latents
    seen = {}
    ex.run(
        PROMPT,
        num_inference_steps=1,
        seed=0,
        guidance_scale=2.0,
        decode=False,
        **OPTIONS,
        hooks={
            n: (lambda x, *, ctx: seen.setdefault(ctx.name, tuple(x.shape)) and None)
            for n in ("step.latents", "step.model.cond", "step.model.uncond", "step.guidance", "step.next")
        },
    )
    assert set(seen.values()) == {(1, 4, 8, 8)} and len(seen) == 5
    hooked = ex.run(
        PROMPT,
        num_inference_steps=STEPS,
        seed=0,
        decode=False,
        **OPTIONS,
        hooks=[Hook("step.next", lambda x, *, ctx: x * 0.5, steps=[1])],
    )
    base = ex.run(PROMPT, num_inference_steps=STEPS, seed=0, decode=False, **OPTIONS)
    forked = ex.fork(base, 2, latents=hooked["step.latents", 2])  # x_t entering step 2, unpacked
    assert torch.equal(forked.final_latents, hooked.final_latents)


def test_options_and_errors(ex):
    with pytest.raises(TypeError, match="embedded_guidance"):
        ex.run(PROMPT, num_inference_steps=1, embedded_guidance=3.5, **OPTIONS)
    with pytest.raises(ValueError, match="max_sequence_length must be between 1 and 512"):
        ex.run(PROMPT, num_inference_steps=1, max_sequence_length=600)
    with pytest.raises(ValueError, match="height .*multiple of 4"):
        ex.run(PROMPT, num_inference_steps=1, height=18, **OPTIONS)


def test_conventions_say_real_cfg_and_no_embedding(ex):
    trace = ex.run(PROMPT, num_inference_steps=1, seed=0, decode=False, **OPTIONS)
    conventions = trace.conventions
    assert conventions["prediction"] == "flow" and conventions["model_time"] == "σ = t/1000"
    assert conventions["guidance_formula"] == "v_u + w·(v_c − v_u), one transformer call per branch"
    assert conventions["classic_offset"] == 0.0 and conventions["pipeline_guidance_scale"] == 5.0
    assert "no guidance embedding" in conventions["notes"]
    assert (ex.family.default_steps, ex.family.default_guidance_scale) == (35, 5.0)
    assert (
        trace.settings["model"]["family"] == "chroma" and trace.settings["model"]["guidance_embeds"] is False
    )


def test_reguide_interventions_and_trace_files(ex, tmp_path):
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=5, guidance_scale=4.0, **OPTIONS)
    assert torch.equal(trace.reguide(1, 4.0).eps_guided, trace["step.guidance", 1])
    assert not torch.equal(trace.reguide(1, 2.0).eps_guided, trace["step.guidance", 1])
    hooked = ex.run(
        PROMPT,
        num_inference_steps=STEPS,
        seed=5,
        guidance_scale=4.0,
        hooks=[interventions.cfg_off(steps=[2])],
        **OPTIONS,
    )
    assert torch.equal(hooked["step.guidance", 2], hooked["step.model.cond", 2])
    assert torch.equal(
        ex.fork(trace, 2, hooks=[interventions.cfg_off(steps=[2])]).final_latents, hooked.final_latents
    )
    changed = ex.fork(trace, 1, prompt="a green triangle")
    assert not torch.equal(changed["prompt.mask.cond"], trace["prompt.mask.cond"])  # another length
    assert ex.fork(trace, 1, guidance_scale=1.0).settings["do_cfg"] is False

    path = tmp_path / "chroma.safetensors"
    trace.save(path)
    loaded = Trace.load(path, explainer=ex)
    assert loaded.hook_names == trace.hook_names and loaded.settings["model"]["family"] == "chroma"
    assert loaded.conditioning["uncond"].keys() == {"embeds", "mask"}
    assert torch.equal(loaded["prompt.mask.cond"], trace["prompt.mask.cond"])
    assert torch.equal(ex.fork(loaded, 1).final_latents, trace.final_latents)


def test_the_family_is_picked_from_pipeline_parts_and_folder(pipe, tmp_path):
    assert family_for_pipeline(pipe) is Chroma
    parts = tiny_chroma_parts()
    scheduler = parts.pop("scheduler")
    built = Explainer(scheduler=scheduler, progress=False, **parts)
    assert isinstance(built.family, Chroma) and built.family.default_size() == (256, 256)  # 128 × 2
    pipe.save_pretrained(tmp_path / "chroma")
    loaded = Explainer.from_pretrained(tmp_path / "chroma", progress=False)
    assert isinstance(loaded.family, Chroma)
    a = built.run(PROMPT, num_inference_steps=2, seed=0, height=SIZE, width=SIZE, decode=False, **OPTIONS)
    b = loaded.run(PROMPT, num_inference_steps=2, seed=0, height=SIZE, width=SIZE, decode=False, **OPTIONS)
    torch.testing.assert_close(a.final_latents, b.final_latents, rtol=1e-5, atol=1e-5)


# ---- attention maps -----------------------------------------------------------------------------------
def test_joint_attention_maps_under_the_text_mask(ex):
    layers = ex.family.attention_layers()
    assert [(layer.name, layer.kind) for layer in layers] == [("transformer_blocks.0.attn", "joint")]
    point = "attn.transformer_blocks.0.attn.probs.cond"
    inputs = []
    handle = layers[0].module.register_forward_pre_hook(
        lambda module, args, kwargs: inputs.append(kwargs), with_kwargs=True
    )
    try:
        trace = ex.run(PROMPT, num_inference_steps=2, seed=0, guidance_scale=1.0, keep=point, **OPTIONS)
    finally:
        handle.remove()
    # the block as FluxAttnProcessor computes it with Chroma's mask: SDPA adds the float 0/1 mask
    attn, given = layers[0].module, inputs[0]
    text, mask = given["encoder_hidden_states"], given["attention_mask"]  # [1, T, 32], [1, 1, T+N, T+N]
    assert mask.dtype == torch.float32 and mask.shape == (1, 1, 32, 32)
    q = torch.cat(
        [
            attn.norm_added_q(attn.add_q_proj(text).unflatten(-1, (4, 8))),
            attn.norm_q(attn.to_q(given["hidden_states"]).unflatten(-1, (4, 8))),
        ],
        dim=1,
    )
    k = torch.cat(
        [
            attn.norm_added_k(attn.add_k_proj(text).unflatten(-1, (4, 8))),
            attn.norm_k(attn.to_k(given["hidden_states"]).unflatten(-1, (4, 8))),
        ],
        dim=1,
    )
    from diffusers.models.embeddings import apply_rotary_emb

    q, k = (apply_rotary_emb(x, given["image_rotary_emb"], sequence_dim=1).transpose(1, 2) for x in (q, k))
    probs = ((q @ k.transpose(-1, -2)) / 8**0.5 + mask).softmax(-1)  # [1, heads, T + N, T + N]
    block = trace[point, 0]
    assert block.shape == (1, 4, 16, 16)
    torch.testing.assert_close(block, probs[:, :, 16:, :16], rtol=1e-5, atol=1e-6)
    kept = trace.conditioning["cond"]["mask"][0].bool()  # ▁a ▁red ▁square ▁on ▁the ▁left </s> and one pad
    assert float(block[..., ~kept].min()) > 0  # the float mask down-weights the other pads, not removes them
    # the maps leave the masked pads out: zero there, summing to 1 over the kept tokens
    maps = trace.attention_maps()
    assert maps.shape[:2] == (1, 16) and float(maps[:, ~kept].abs().max()) == 0.0
    torch.testing.assert_close(maps.sum(1), torch.ones_like(maps[:, 0]), rtol=0, atol=1e-5)
    assert trace.tokens[0].text == "▁a" and trace.attention("red").abs().max() > 0
    # with CFG both branches get maps, each under its own mask
    guided = ex.run(PROMPT, num_inference_steps=2, seed=0, negative_prompt="blue", **OPTIONS)
    assert set(guided.steps[0].attention) == {"cond@4x4", "uncond@4x4"}
    uncond = guided.steps[0].attention["uncond@4x4"]
    assert (
        float(uncond[:, 3:].abs().max()) == 0.0 and float(uncond[:, :3].sum(1).min()) > 0.99
    )  # ▁blue </s> <pad>
    # edits act on the block: a weight of 1 changes nothing, of 0 removes the word
    same = ex.run(PROMPT, num_inference_steps=2, seed=0, hooks=edits.reweight("red", 1.0), **OPTIONS)
    plain = ex.run(PROMPT, num_inference_steps=2, seed=0, **OPTIONS)
    assert torch.equal(same.final_latents, plain.final_latents)
    gone = ex.run(PROMPT, num_inference_steps=2, seed=0, hooks=edits.reweight("red", 0.0), **OPTIONS)
    assert not torch.equal(gone.final_latents, plain.final_latents)
    assert gone.attention("red").abs().max() == 0


# ---- widgets ------------------------------------------------------------------------------------------
def texts(widget: W.Widget) -> str:
    """Every HTML text inside a widget, recursively."""
    found = [widget.value] if isinstance(widget, W.HTML) else []
    for child in getattr(widget, "children", ()):
        found.append(texts(child))
    return " ".join(found)


def errors(widget) -> str:
    return "".join(o.get("text", "") for o in widget.output.outputs)


def test_widgets_and_the_html_page_open_a_chroma_trace(ex, tmp_path):
    trace = ex.run(PROMPT, num_inference_steps=3, seed=0, **OPTIONS)
    explorer = StepExplorer(trace)
    assert errors(explorer) == ""
    words = texts(explorer)
    assert "velocity predicted with prompt" in words and "the transformer" in words
    before = explorer.images["x0"].value
    explorer.slider.value = 2
    assert errors(explorer) == "" and explorer.images["x0"].value != before
    path = tmp_path / "chroma.safetensors"
    trace.save(path)
    assert errors(TracePlayer(Trace.load(path))) == ""
    assert errors(AttentionMaps(trace)) == ""
    page = trace.to_html(tmp_path / "page.html").read_text(encoding="utf-8")
    assert "velocity" in page


def test_guidance_lab_on_chroma_reguides_without_a_model_call(ex):
    widget = GuidanceLab(ex, PROMPT, num_inference_steps=3)
    assert errors(widget) == ""
    assert widget.off.settings["do_cfg"] is False and widget.on.settings["guidance_scale"] == 5.0
    calls = []
    handle = ex.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        before = widget.strip.value
        widget.scale.value = widget.scale.value + 2
    finally:
        handle.remove()
    assert errors(widget) == "" and calls == [] and widget.strip.value != before


@pytest.mark.parametrize("make", ["noise_lab", "prompt_swap", "forward_process"])
def test_the_other_widgets_build_on_chroma(ex, make):
    widget = {
        "noise_lab": lambda: NoiseLab(ex, PROMPT, num_inference_steps=2),
        "prompt_swap": lambda: PromptSwap(ex, PROMPT, "a blue square", num_inference_steps=2),
        "forward_process": lambda: ForwardProcess(ex),
    }[make]()
    assert errors(widget) == ""


def test_the_docs_page_lists_exactly_the_familys_hook_points():
    import importlib.util
    from pathlib import Path

    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    docs = Path(__file__).resolve().parents[1] / "docs"
    spec = importlib.util.spec_from_file_location("chroma_docs_hooks", docs / "hooks" / "diffexplain_docs.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    markdown = (docs / "families" / "chroma.md").read_text(encoding="utf-8")
    assert hooks.hook_table_problems(markdown, Chroma.extra_points) == []


@pytest.mark.parametrize("kind", ["float", "bool"])
@torch.no_grad()
def test_an_edit_of_p_under_the_mask_changes_the_output_by_its_change(pipe, kind):
    """The wrapper keeps the layer's own output and, where p's text block is edited, adds the change of
    p·V: checked against the joint attention written out with the mask added to the scores."""
    from diffusers.models.embeddings import apply_rotary_emb

    from diffexplain.attention.processors import JointAttentionCapture
    from tests.test_attention_beside import Capture as StandIn
    from tests.test_attention_beside import halve_first_token

    class Capture(StandIn):
        def probs(self, layer: str, probs: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
            self.keep = keep  # [B, T]: the tokens the mask lets through, for the maps
            return super().probs(layer, probs)

    model = pipe.transformer
    layer = model.transformer_blocks[0].attn
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 16, layer.to_q.in_features, generator=generator)  # [B, N, C]
    text = torch.randn(2, 6, layer.add_k_proj.in_features, generator=generator)  # [B, T, C]
    keep = torch.tensor([[1.0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    joint = torch.cat([keep, torch.ones(2, 16)], dim=1)
    mask = joint[:, None, None, :] * joint[:, None, :, None]  # [B, 1, T + N, T + N], as Chroma's blocks
    mask = mask.bool() if kind == "bool" else mask
    grid = torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij")
    rotary = model.pos_embed(torch.cat([torch.zeros(6, 3), torch.stack(grid, -1).reshape(16, 3)]))
    own, _ = layer.processor(layer, hidden, text, mask, rotary)
    capture = Capture(halve_first_token)
    edited, _ = JointAttentionCapture(layer.processor, "L", capture)(layer, hidden, text, mask, rotary)
    same, _ = JointAttentionCapture(layer.processor, "L", Capture(lambda p: p))(
        layer, hidden, text, mask, rotary
    )
    assert torch.equal(same, own)

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (layer.heads, -1)).transpose(1, 2)

    q = torch.cat(
        [layer.norm_added_q(heads(layer.add_q_proj(text))), layer.norm_q(heads(layer.to_q(hidden)))], 2
    )
    k = torch.cat(
        [layer.norm_added_k(heads(layer.add_k_proj(text))), layer.norm_k(heads(layer.to_k(hidden)))], 2
    )
    v = torch.cat([heads(layer.add_v_proj(text)), heads(layer.to_v(hidden))], 2)
    q, k = apply_rotary_emb(q, rotary, sequence_dim=2), apply_rotary_emb(k, rotary, sequence_dim=2)
    bias = mask if kind == "float" else torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    p = ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + bias).softmax(-1)  # [B, heads, L, L]
    torch.testing.assert_close(capture.seen[0], p[:, :, 6:, :6], rtol=1e-5, atol=1e-6)
    assert torch.equal(capture.keep, keep.bool())
    if kind == "bool":
        assert float(capture.seen[0][0, :, :, 3:].abs().max()) == 0.0  # a boolean mask removes the pads
    p[:, :, 6:, :6] = halve_first_token(p[:, :, 6:, :6])
    expected = layer.to_out[0]((p @ v).transpose(1, 2).flatten(2, 3)[:, 6:])
    torch.testing.assert_close(edited, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(edited, own, atol=1e-4)


@pytest.mark.parametrize("w", [1.0, 5.0])
def test_a_run_from_a_picture_equals_chromas_img2img_pipeline(pipe, ex, w):
    from diffusers import ChromaImg2ImgPipeline

    img2img = ChromaImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    picture = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))  # in [0, 1]
    trace = ex.run(
        PROMPT, image=picture, num_inference_steps=5, seed=1, decode=False, guidance_scale=w, **OPTIONS
    )
    assert trace.settings["strength"] == 0.9  # ChromaImg2ImgPipeline's default
    packed = img2img(
        PROMPT,
        image=picture,
        num_inference_steps=5,
        guidance_scale=w,
        generator=torch.Generator().manual_seed(1),
        output_type="latent",
        height=SIZE,
        width=SIZE,
        **OPTIONS,
    ).images
    assert torch.equal(trace.final_latents, pipe._unpack_latents(packed, SIZE, SIZE, pipe.vae_scale_factor))
    assert torch.equal(ex.fork(trace, 2).final_latents, trace.final_latents)
