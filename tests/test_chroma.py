"""Chroma through the same loop: parity with ChromaPipeline (CFG on and off, negative prompts, a batch of
two, attention maps on) and ChromaImg2ImgPipeline, bit-exact forks at every step, the text mask as a hook
point, trace files, reguide, conventions, the family's pick, and every widget and the HTML page on a
Chroma trace. The attention maps under the mask: tests/test_chroma_attention.py."""

from __future__ import annotations

import ipywidgets as W
import pytest
import torch
from diffusers import ChromaPipeline

from diffexplain import Explainer, Trace, interventions
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
