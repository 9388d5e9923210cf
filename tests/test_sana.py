"""SANA through the same loop: parity with SanaPipeline bit for bit (attention maps on: guidance on and off,
a negative prompt, no instruction, a batch of two, a learned-σ transformer), bit-exact forks at every
step, the text positions the cross-attention reads (<bos> and the tail after the complex human instruction),
cross-attention maps from the attn2 layers only (attn1's linear attention untouched), reweight edits,
hooks and their errors, trace files, reguide, conventions, the family's pick, and every widget."""

from __future__ import annotations

from pathlib import Path

import ipywidgets as W
import pytest
import torch
from diffusers import SanaPipeline

from diffexplain import Explainer, Trace, interventions
from diffexplain.attention import edits
from diffexplain.families import Sana, family_for_pipeline
from diffexplain.families.sana_text import INSTRUCTION
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
from tests.tiny_sana import SANA_MAX_SEQUENCE_LENGTH, default_instruction, tiny_sana_parts, tiny_sana_pipeline

PROMPT = "A Red cube on the left"  # the pipeline lower-cases it before Gemma reads it
STEPS = 4
SIZE = 32  # px: SanaPipeline wants multiples of 32; the tiny DC-AE compresses 4×: latents [B, 4, 8, 8]
M = SANA_MAX_SEQUENCE_LENGTH
OPTIONS = {"max_sequence_length": M}


@pytest.fixture(scope="module")
def pipe() -> SanaPipeline:
    return tiny_sana_pipeline()


@pytest.fixture(scope="module")
def ex(pipe) -> Explainer:
    return Explainer.from_pipeline(pipe, progress=False)


def pipeline_latents(pipe: SanaPipeline, prompt, seed: int, **kwargs) -> torch.Tensor:
    """SanaPipeline's final latents [B, C, h, w] (no resolution binning: it knows real sizes only)."""
    return pipe(
        prompt,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        height=SIZE,
        width=SIZE,
        use_resolution_binning=False,
        **OPTIONS,
        **kwargs,
    ).images


CASES = [
    ("default w = 4.5", {}, {}),
    ("w = 1, one branch", dict(guidance_scale=1.0), dict(guidance_scale=1.0)),
    ("a negative prompt, w = 6", dict(negative_prompt="Blue", guidance_scale=6.0), dict(negative_prompt="Blue", guidance_scale=6.0)),
    ("no instruction", dict(complex_human_instruction=None), dict(complex_human_instruction=None)),
]  # fmt: skip


@pytest.mark.parametrize(("ours", "theirs"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_run_equals_the_pipeline_and_every_fork_replays_it(pipe, ex, ours, theirs):
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=3, decode=False, **OPTIONS, **ours)
    assert trace.steps[0].attention  # maps on (the default), and still bit for bit
    assert torch.equal(trace.final_latents, pipeline_latents(pipe, PROMPT, 3, **theirs))
    two_branches = ours.get("guidance_scale", 4.5) > 1
    assert trace.settings["do_cfg"] is two_branches and ("uncond" in trace.conditioning) is two_branches
    assert trace.final_latents.dtype == torch.float32
    for k in range(STEPS):
        forked = ex.fork(trace, k)
        assert torch.equal(forked.final_latents, trace.final_latents), k


def test_a_batch_with_negative_prompts_and_a_learned_sigma_transformer():
    pipe = tiny_sana_pipeline(out_channels=8)  # twice the channels out: the pipeline keeps the first half
    ex = Explainer.from_pipeline(pipe, progress=False)
    prompts = [PROMPT, "a blue circle"]
    trace = ex.run(
        prompts, negative_prompt=["green", "red"], num_inference_steps=STEPS, seed=1, decode=False, **OPTIONS
    )
    expected = pipeline_latents(pipe, prompts, 1, negative_prompt=["green", "red"])
    assert torch.equal(trace.final_latents, expected)
    assert trace["step.pred_x0"].shape == (STEPS, 2, 4, 8, 8)
    assert trace["prompt.attention_mask.uncond"].shape == (2, M)
    assert torch.equal(ex.fork(trace, 2).final_latents, trace.final_latents)


# ---- the text ---------------------------------------------------------------------------------------------
def test_the_tokens_are_the_positions_the_pipeline_keeps(pipe, ex):
    seen = []  # the Gemma input ids of each encode_prompt call
    handle = pipe.text_encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        trace = ex.run(PROMPT, num_inference_steps=1, seed=0, decode=False, **OPTIONS)
    finally:
        handle.remove()
    cond_ids, uncond_ids = seen[0][0], seen[1][0]
    length = len(pipe.tokenizer.encode("\n".join(default_instruction()))) + M - 2
    assert cond_ids.shape == (length,) and uncond_ids.shape == (M,)  # the negative: no instruction
    kept = [0, *range(length - M + 1, length)]  # <bos>, then the last M − 1 positions
    tokens, negative = trace.tokens, trace.token_lists("uncond")[0]
    assert [t.text for t in tokens] == pipe.tokenizer.convert_ids_to_tokens(cond_ids[kept].tolist())
    assert [t.text for t in negative] == pipe.tokenizer.convert_ids_to_tokens(uncond_ids.tolist())
    assert [t.index for t in tokens] == list(range(M)) and trace["prompt.cond"].shape == (1, M, 16)
    # the default instruction ends in "User Prompt: ": its last space joins the first word ("▁a"), so
    # no instruction token is among the kept positions; the prompt is read lower-cased
    assert [(t.kind, t.word) for t in tokens[:4]] == [
        ("start", None),
        ("word", "a"),
        ("word", "red"),
        ("word", "cube"),
    ]
    read = int(trace["prompt.attention_mask.cond"].sum())  # <bos> and the prompt's tokens; padding after
    assert [t.kind for t in tokens] == ["start"] + ["word"] * (read - 1) + ["pad"] * (M - read)
    assert tokens[1].text == "▁a" and tokens[read - 1].word == "left"
    assert trace.settings["options"]["complex_human_instruction"] == default_instruction()
    assert trace.attention("Red").shape == (1, SIZE, SIZE)
    with pytest.raises(ValueError, match="'Prompt' is not a word of the prompt"):
        trace.attention("Prompt")  # a word of the instruction only


def test_an_instruction_whose_last_token_is_kept_is_marked(pipe, ex):
    instruction = ["Draw this:", ""]  # ends in a newline, a token of its own
    trace = ex.run(PROMPT, num_inference_steps=1, seed=0, complex_human_instruction=instruction, **OPTIONS)
    expected = pipe(PROMPT, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="latent",
                    height=SIZE, width=SIZE, use_resolution_binning=False, complex_human_instruction=instruction,
                    **OPTIONS).images  # fmt: skip
    assert torch.equal(trace.final_latents, expected)
    kinds = [t.kind for t in trace.tokens]
    assert kinds[:3] == ["start", INSTRUCTION, "word"] and trace.tokens[1].word is None
    assert (
        trace.tokens[1].text == "<0x0A>"
        and trace.settings["options"]["complex_human_instruction"] == instruction
    )
    assert "instruction" in AttentionMaps(trace).token.options[1][0]
    with pytest.raises(ValueError, match="complex_human_instruction must be a list of strings"):
        ex.run(PROMPT, num_inference_steps=1, complex_human_instruction="draw", **OPTIONS)
    with pytest.raises(ValueError, match="max_sequence_length must be at least 2"):
        ex.run(PROMPT, num_inference_steps=1, max_sequence_length=1)


def test_a_prompt_longer_than_the_kept_positions_warns_and_keeps_its_start(pipe, ex):
    prompt = (
        "a red cube on the left of a blue sphere above a green triangle beside a yellow circle in the snow"
    )
    with pytest.warns(UserWarning, match=r"text_encoder \(Gemma2Model\) reads at most 16 tokens.*drops"):
        trace = ex.run(prompt, num_inference_steps=1, seed=0, decode=False, **OPTIONS)
    expected = pipe(prompt, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="latent",
                    height=SIZE, width=SIZE, use_resolution_binning=False, **OPTIONS).images  # fmt: skip
    assert torch.equal(trace.final_latents, expected)
    tokens = trace.tokens  # the pipeline cuts the end of [instruction; prompt]: the prompt's start is kept
    assert [t.kind for t in tokens] == ["start"] + ["word"] * (M - 1)
    assert tokens[1].word == "a" and "snow" not in {t.word for t in tokens}


# ---- attention ----------------------------------------------------------------------------------------------
def test_the_attention_layers_are_the_cross_attention_ones(ex):
    layers = ex.family.attention_layers()
    assert [(layer.name, layer.kind) for layer in layers] == [
        ("transformer_blocks.0.attn2", "cross"),
        ("transformer_blocks.1.attn2", "cross"),
    ]
    attn1 = [block.attn1.processor for block in ex.model.transformer_blocks]
    before = [layer.module.processor for layer in layers]
    calls = []  # attn2's inputs in block 0: (image states, keyword arguments)
    hook = layers[0].module.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((args[0], kwargs)), with_kwargs=True
    )
    point = "attn.transformer_blocks.0.attn2.probs.cond"
    try:
        trace = ex.run(PROMPT, num_inference_steps=2, seed=0, keep=point, **OPTIONS)
    finally:
        hook.remove()
    assert {type(p).__name__ for p in attn1} == {"SanaLinearAttnProcessor2_0"}
    assert [block.attn1.processor for block in ex.model.transformer_blocks] == attn1  # never wrapped
    assert [layer.module.processor for layer in layers] == before  # the model's own are back
    # p as softmax(QKᵀ/√d + bias) with the padded keys' −10000 bias, as SanaAttnProcessor2_0's SDPA computes it
    attn, (image, given) = layers[0].module, calls[0]  # step 0, rows [uncond; cond]
    text, bias = given["encoder_hidden_states"][1:], given["attention_mask"][1:]  # [1, M, 16], [1, 1, M]
    q = attn.to_q(image[1:]).unflatten(-1, (2, 8)).transpose(1, 2)  # [1, heads, 64, 8]
    k = attn.to_k(text).unflatten(-1, (2, 8)).transpose(1, 2)  # [1, heads, M, 8]
    probs = ((q @ k.transpose(-1, -2)) / 8**0.5 + bias[:, None]).softmax(-1)  # [1, heads, 64, M]
    torch.testing.assert_close(trace[point, 0], probs, rtol=1e-5, atol=1e-6)
    pads = trace.conditioning["cond"]["attention_mask"][0] == 0
    assert float(trace[point, 0][..., pads].max()) < 1e-30  # padding is never read
    maps = trace.attention_maps()
    assert maps.shape == (1, M, SIZE, SIZE)
    torch.testing.assert_close(maps.sum(1), torch.ones_like(maps[:, 0]), rtol=0, atol=1e-5)
    assert set(trace.steps[0].attention) == {"cond@8x8", "uncond@8x8"}


def test_reweight_edits_act_on_the_cross_attention(ex):
    plain = ex.run(PROMPT, num_inference_steps=2, seed=0, **OPTIONS)
    same = ex.run(PROMPT, num_inference_steps=2, seed=0, hooks=edits.reweight("red", 1.0), **OPTIONS)
    assert torch.equal(same.final_latents, plain.final_latents)
    gone = ex.run(PROMPT, num_inference_steps=2, seed=0, hooks=edits.reweight("red", 0.0), **OPTIONS)
    assert not torch.equal(gone.final_latents, plain.final_latents)
    assert gone.attention("red").abs().max() == 0


# ---- hooks, files, guidance, conventions --------------------------------------------------------------------
def test_hooks_on_the_attention_mask_and_replacement_errors(ex):
    names = [p.name for p in ex.hook_points()]
    assert {"prompt.attention_mask.cond", "prompt.attention_mask.uncond"} <= set(names)
    plain = ex.run(PROMPT, num_inference_steps=2, seed=0, **OPTIONS)
    opened = ex.run(  # every position read, padding too: another picture
        PROMPT, num_inference_steps=2, seed=0, hooks={"prompt.attention_mask.cond": lambda m, *, ctx: torch.ones_like(m)}, **OPTIONS
    )  # fmt: skip
    assert not torch.equal(opened.final_latents, plain.final_latents)
    assert [r.name for r in opened.replacements] == ["prompt.attention_mask.cond"]
    with pytest.raises(ValueError, match=r"step\.latents.*shape"):
        ex.run(
            PROMPT,
            num_inference_steps=2,
            seed=0,
            hooks=[Hook("step.latents", lambda x, *, ctx: x[..., :4])],
            **OPTIONS,
        )
    with pytest.raises(ValueError, match=r"latents has shape \[1, 4, 4, 4\]; expected \[1, 4, 8, 8\]"):
        ex.run(PROMPT, num_inference_steps=1, latents=torch.zeros(1, 4, 4, 4), **OPTIONS)
    with pytest.raises(ValueError, match="height .*multiple of 32"):
        ex.run(PROMPT, num_inference_steps=1, height=48, **OPTIONS)


def test_reguide_interventions_trace_files_and_conventions(ex, tmp_path):
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=5, **OPTIONS)
    assert torch.equal(trace.reguide(1, 4.5).eps_guided, trace["step.guidance", 1])
    hooked = ex.run(
        PROMPT, num_inference_steps=STEPS, seed=5, hooks=[interventions.cfg_off(steps=[2, 3])], **OPTIONS
    )
    assert torch.equal(hooked["step.guidance", 2], hooked["step.model.cond", 2])
    assert torch.equal(
        ex.fork(trace, 2, hooks=[interventions.cfg_off(steps=[2, 3])]).final_latents, hooked.final_latents
    )
    changed = ex.fork(trace, 1, prompt="a green triangle")
    assert not torch.equal(changed["prompt.cond"], trace["prompt.cond"])
    conventions = trace.conventions
    assert conventions["prediction"] == "flow_prediction" and conventions["model_output_sign"] == 1
    assert conventions["model_time"].startswith("t·timestep_scale") and conventions["guidance_scale"] == 4.5
    assert conventions["pipeline_guidance_scale"] == 4.5 and "instruction" in conventions["notes"]
    # x̂0 = x_t − σ·v at the last step is the final latents: DPM-Solver's last step lands on its x̂0
    torch.testing.assert_close(trace["step.pred_x0", STEPS - 1], trace.final_latents, rtol=0, atol=1e-6)
    assert trace["decode.image"].shape == (1, 3, SIZE, SIZE)

    path = tmp_path / "sana.safetensors"
    trace.save(path)
    loaded = Trace.load(path, explainer=ex)
    assert loaded.settings["model"]["family"] == "sana" and loaded.conventions == trace.conventions
    assert loaded.conditioning["uncond"].keys() == {"embeds", "attention_mask"}
    assert [t.kind for t in loaded.tokens] == [t.kind for t in trace.tokens]
    assert torch.equal(loaded["step.pred_x0"], trace["step.pred_x0"])
    assert torch.equal(ex.fork(loaded, 1).final_latents, trace.final_latents)


def test_the_family_is_picked_from_pipeline_parts_and_folder(pipe, tmp_path):
    assert family_for_pipeline(pipe) is Sana
    parts = tiny_sana_parts()
    scheduler = parts.pop("scheduler")
    built = Explainer(scheduler=scheduler, progress=False, **parts)
    assert isinstance(built.family, Sana) and built.family.default_size() == (SIZE, SIZE)  # 8 × 4
    assert built.scheduler_names == ("flow_euler", "dpm++2m", "unipc")
    pipe.save_pretrained(tmp_path / "sana")
    loaded = Explainer.from_pretrained(tmp_path / "sana", progress=False)
    assert isinstance(loaded.family, Sana)
    a = built.run(PROMPT, num_inference_steps=2, seed=0, decode=False, **OPTIONS)
    b = loaded.run(PROMPT, num_inference_steps=2, seed=0, decode=False, **OPTIONS)
    torch.testing.assert_close(a.final_latents, b.final_latents, rtol=1e-5, atol=1e-5)


def test_the_docs_page_lists_exactly_the_hook_points():
    docs = Path(__file__).parent.parent / "docs"
    pytest.importorskip("mkdocs")
    from diffexplain.families import SanaSprint
    from tests.test_docs import _docs_hooks

    page = (docs / "families" / "sana.md").read_text(encoding="utf-8")
    sana, sprint = page.split("## SANA-Sprint")  # one page, a table for each family
    assert _docs_hooks().hook_table_problems(sana, Sana.extra_points) == []
    assert _docs_hooks().hook_table_problems(sprint, SanaSprint.extra_points) == []
    assert "families/sana.md" in (docs.parent / "mkdocs.yml").read_text(encoding="utf-8")


# ---- widgets ------------------------------------------------------------------------------------------------
def texts(widget: W.Widget) -> str:
    """Every HTML text inside a widget, recursively."""
    found = [widget.value] if isinstance(widget, W.HTML) else []
    for child in getattr(widget, "children", ()):
        found.append(texts(child))
    return " ".join(found)


def errors(widget) -> str:
    return "".join(o.get("text", "") for o in widget.output.outputs)


def test_widgets_open_a_sana_trace_and_the_html_page(ex, tmp_path):
    trace = ex.run(PROMPT, num_inference_steps=3, seed=0, **OPTIONS)
    explorer = StepExplorer(trace)
    assert errors(explorer) == ""
    words = texts(explorer)
    assert "velocity predicted with prompt" in words and "the transformer" in words
    before = explorer.images["x0"].value
    explorer.slider.value = 2
    assert errors(explorer) == "" and explorer.images["x0"].value != before
    path = tmp_path / "sana.safetensors"
    trace.save(path)
    assert errors(TracePlayer(Trace.load(path))) == ""
    maps = AttentionMaps(trace)
    assert errors(maps) == ""
    page = tmp_path / "page.html"
    trace.to_html(page)
    assert "velocity" in page.read_text(encoding="utf-8")


@pytest.mark.parametrize("make", ["noise_lab", "prompt_swap", "forward_process", "guidance_lab"])
def test_the_other_widgets_build_on_sana(ex, make):
    widget = {
        "noise_lab": lambda: NoiseLab(ex, PROMPT, num_inference_steps=3),
        "prompt_swap": lambda: PromptSwap(ex, PROMPT, "a blue square", num_inference_steps=3),
        "forward_process": lambda: ForwardProcess(ex),
        "guidance_lab": lambda: GuidanceLab(ex, PROMPT, num_inference_steps=3),
    }[make]()
    assert errors(widget) == ""
