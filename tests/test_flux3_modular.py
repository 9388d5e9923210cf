"""FLUX.3 from Modular Diffusers: ``Explainer.from_pipeline`` of a ``Flux3ModularPipeline`` and of the
step-distilled ``Flux3DistilledModularPipeline`` (a flow map) equals the modular pipeline's
``output="latents"`` bit for bit (maps on, guidance on and off, negative prompt, batch of 2); forks are
bit-exact at every step; hooks and replacements, trace files, reguide, conventions, the flow map's
target timestep per step, attention maps per token over the single-stream joint sequence, and the widgets."""

from __future__ import annotations

import warnings

import ipywidgets as W
import pytest
import torch

from diffexplain import Explainer, Trace
from diffexplain.attention import edits
from diffexplain.families import Flux3, Flux3Distilled, family_for_pipeline
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
from tests.tiny_flux3 import FLUX3_SIZE, tiny_flux3_parts, tiny_flux3_pipeline

PROMPT = "a red cube on the left of a blue sphere"
STEPS = 3
SIZE = dict(height=FLUX3_SIZE, width=FLUX3_SIZE)

pytestmark = pytest.mark.filterwarnings("ignore:Guiders are currently an experimental feature")


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux3_pipeline()


@pytest.fixture(scope="module")
def ex(pipe) -> Explainer:
    return Explainer.from_pipeline(pipe, progress=False)


@pytest.fixture(scope="module")
def distilled_pipe():
    return tiny_flux3_pipeline(distilled=True)


@pytest.fixture(scope="module")
def distilled(distilled_pipe) -> Explainer:
    return Explainer.from_pipeline(distilled_pipe, progress=False)


def modular_latents(pipe, seed: int, guidance_scale: float | None = None, **kwargs) -> torch.Tensor:
    """The modular pipeline's final latents [B, C, h, w] (its ``output="latents"``), with its guider at w."""
    if guidance_scale is not None:
        pipe.guider.guidance_scale = guidance_scale
    try:
        return pipe(
            prompt=PROMPT,
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(seed),
            output="latents",
            **SIZE,
            **kwargs,
        )
    finally:
        if guidance_scale is not None:
            pipe.guider.guidance_scale = 3.5


# ---- parity and forks ---------------------------------------------------------------------------------
CASES = [
    ("one branch", dict(guidance_scale=1.0), dict(guidance_scale=1.0)),
    ("CFG, empty negative", dict(guidance_scale=3.5), dict(guidance_scale=3.5)),
    (
        "CFG, a negative prompt",
        dict(guidance_scale=5.0, negative_prompt="a green cone"),
        dict(guidance_scale=5.0, negative_prompt="a green cone"),
    ),
]


@pytest.mark.parametrize(("ours", "theirs"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_run_equals_the_modular_pipeline_and_forks_replay_it(pipe, ex, ours, theirs):
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=3, decode=False, **SIZE, **ours)
    assert torch.equal(trace.final_latents, modular_latents(pipe, 3, **theirs))
    two_branches = ours["guidance_scale"] > 1
    assert trace.settings["do_cfg"] is two_branches
    assert trace.run_settings.guider["cls"] == "ClassifierFreeGuidance"  # the pipeline's guider, by default
    assert set(trace.steps[0].attention) == ({"cond@4x4", "uncond@4x4"} if two_branches else {"cond@4x4"})
    for k in range(STEPS):
        assert torch.equal(ex.fork(trace, k).final_latents, trace.final_latents), k
    # flow matching: x̂0 of the last step is the picture (σ_next = 0)
    torch.testing.assert_close(trace["step.pred_x0", STEPS - 1], trace.final_latents, rtol=0, atol=1e-6)


def test_a_batch_of_two_equals_two_images_per_prompt(pipe, ex):
    trace = ex.run([PROMPT, PROMPT], num_inference_steps=STEPS, seed=1, decode=False, **SIZE)
    expected = modular_latents(pipe, 1, num_images_per_prompt=2)
    assert trace.final_latents.shape == (2, 16, 4, 4)
    assert torch.equal(trace.final_latents, expected)


def test_without_the_pipelines_guider_the_family_still_calls_once_per_branch(pipe):
    """Built from parts (no modular pipeline, no guider): one call per branch, the same bits."""
    parts = tiny_flux3_parts()
    scheduler = parts.pop("scheduler")
    built = Explainer(scheduler=scheduler, progress=False, **parts)
    assert type(built.family) is Flux3 and built.defaults == {}
    trace = built.run(PROMPT, num_inference_steps=STEPS, seed=2, guidance_scale=3.5, decode=False, **SIZE)
    assert trace.run_settings.guider is None
    assert torch.equal(trace.final_latents, modular_latents(pipe, 2))


# ---- the flow map -------------------------------------------------------------------------------------
def test_the_flow_map_equals_its_pipeline_and_records_where_each_step_jumps(distilled_pipe, distilled):
    expected = distilled_pipe(
        prompt=PROMPT,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(4),
        output="latents",
        **SIZE,
    )
    trace = distilled.run(PROMPT, num_inference_steps=STEPS, seed=4, decode=False, **SIZE)
    assert torch.equal(trace.final_latents, expected)
    assert type(distilled.family) is Flux3Distilled and trace.settings["do_cfg"] is False
    # t' per step: the next step's t, 0 after the last; the transformer reads (t/1000, t'/1000)
    assert trace.scalars("target_timestep") == [*trace.timesteps[1:], 0.0]
    seen = []
    handle = distilled.model.register_forward_pre_hook(
        lambda m, a, kw: seen.append((float(kw["timestep"][0]), float(kw["target_timestep"][0]))),
        with_kwargs=True,
    )
    try:
        distilled.run(PROMPT, num_inference_steps=STEPS, seed=4, decode=False, attention_maps=False, **SIZE)
    finally:
        handle.remove()
    expected_times = [
        (t / 1000, u / 1000) for t, u in zip(trace.timesteps, trace.scalars("target_timestep"), strict=True)
    ]
    assert [x for pair in seen for x in pair] == pytest.approx([x for pair in expected_times for x in pair])
    for k in range(STEPS):
        assert torch.equal(distilled.fork(trace, k).final_latents, trace.final_latents), k
    # x̂0 = x_t − σ·u: the jump continued to σ = 0, the flow map's own jump at the last step
    torch.testing.assert_close(trace["step.pred_x0", STEPS - 1], trace.final_latents, rtol=0, atol=1e-6)
    conventions = trace.conventions
    assert conventions["model_time"].startswith("(σ, σ') = (t/1000, t'/1000)")
    assert "no classifier-free guidance" in conventions["guidance_formula"]
    assert "target_timestep" in conventions["notes"]


def test_the_flow_map_refuses_guidance_with_a_clear_message(distilled):
    assert distilled.defaults == {}  # the distilled pipeline has no guider
    with pytest.raises(
        ValueError, match=r"no classifier-free guidance\) runs one branch: guidance_scale must be 1"
    ):
        distilled.run(PROMPT, num_inference_steps=1, seed=0, guidance_scale=3.5, decode=False, **SIZE)


# ---- recognition --------------------------------------------------------------------------------------
def test_modular_pipelines_are_recognised_by_their_blocks_and_others_are_named(pipe, distilled_pipe):
    assert family_for_pipeline(pipe) is Flux3 and family_for_pipeline(distilled_pipe) is Flux3Distilled
    parts = tiny_flux3_parts(distilled=True)
    scheduler = parts.pop("scheduler")
    assert (
        type(Explainer(scheduler=scheduler, progress=False, **parts).family) is Flux3Distilled
    )  # flow_map=True
    from diffusers.modular_pipelines import QwenImageModularPipeline

    with pytest.raises(
        ValueError,
        match=r"QwenImageModularPipeline .* Modular Diffusers pipeline that diffexplain.*Flux3ModularPipeline",
    ):
        family_for_pipeline(QwenImageModularPipeline())


def test_the_prompt_upsampler_is_not_run_and_from_pipeline_says_so():
    from diffusers.modular_pipelines import Flux3ModularPipeline

    full = Flux3ModularPipeline()  # the default blocks, prompt upsampler first
    full.update_components(**tiny_flux3_parts())
    with pytest.warns(
        UserWarning, match=r"encodes the prompt as given; the pipeline's prompt_upsampler step"
    ):
        Explainer.from_pipeline(full, progress=False)


# ---- hooks, files, reguide, conventions ---------------------------------------------------------------
def test_hooks_replacements_files_and_reguide(ex, tmp_path):
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=5, decode=False, **SIZE)
    zeroed = ex.run(
        PROMPT, num_inference_steps=STEPS, seed=5, decode=False, **SIZE,
        hooks=Hook("step.model.uncond", lambda x, ctx: torch.zeros_like(x), steps=[1]),
    )  # fmt: skip
    assert torch.equal(zeroed["step.model.uncond", 1], torch.zeros(1, 16, 4, 4))
    assert not torch.equal(zeroed.final_latents, trace.final_latents)
    assert torch.equal(ex.fork(zeroed, 2).final_latents, zeroed.final_latents)
    with pytest.raises(ValueError, match=r"step.latents.*shape"):
        ex.run(
            PROMPT, num_inference_steps=1, seed=0, decode=False, **SIZE,
            hooks=Hook("step.latents", lambda x, ctx: x[..., :2]),
        )  # fmt: skip
    assert torch.equal(trace.reguide(1, 3.5).eps_guided, trace["step.guidance", 1])
    path = tmp_path / "flux3.safetensors"
    trace.save(path)
    loaded = Trace.load(path, explainer=ex)
    assert torch.equal(loaded["step.pred_x0"], trace["step.pred_x0"])
    assert torch.equal(ex.fork(loaded, 1).final_latents, trace.final_latents)
    conventions = loaded.conventions
    assert conventions["prediction"] == "flow" and conventions["model_time"] == "σ = t/1000"
    assert "one transformer call per branch" in conventions["guidance_formula"]
    assert conventions["guidance_scale"] == 3.5 == conventions["pipeline_guidance_scale"]


# ---- attention maps -----------------------------------------------------------------------------------
def test_attention_maps_are_the_image_to_text_block_of_the_joint_sequence(ex):
    layers = ex.family.attention_layers()
    assert [(layer.name, layer.kind) for layer in layers] == [("single_transformer_blocks.0.attn", "single")]
    point = "attn.single_transformer_blocks.0.attn.probs.cond"
    module = layers[0].module
    before = module.processor
    inputs = []
    handle = module.register_forward_pre_hook(
        lambda m, args, kwargs: inputs.append((args, kwargs)), with_kwargs=True
    )
    try:
        plain = ex.run(
            PROMPT, num_inference_steps=2, seed=0, attention_maps=False, guidance_scale=1.0, **SIZE
        )
    finally:
        handle.remove()
    trace = ex.run(PROMPT, num_inference_steps=2, seed=0, guidance_scale=1.0, keep=point, **SIZE)
    assert module.processor is before and torch.equal(plain.final_latents, trace.final_latents)
    # p as Flux3AttnProcessor computes it: RMS-normed, rotary queries and keys over [text; image]
    from diffusers.models.embeddings import apply_rotary_emb

    args, kwargs = inputs[0]
    x, rotary = kwargs.get("hidden_states", args[0] if args else None), kwargs.get("image_rotary_emb")
    q = apply_rotary_emb(module.norm_q(module.to_q(x).unflatten(-1, (2, 8))), rotary, sequence_dim=1)
    k = apply_rotary_emb(module.norm_k(module.to_k(x).unflatten(-1, (2, 8))), rotary, sequence_dim=1)
    probs = ((q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2)) / 8**0.5).softmax(-1)
    n_text = x.shape[1] - 16
    block = trace[point, 0]
    assert block.shape == (1, 2, 16, n_text) == (1, 2, 16, 80)
    torch.testing.assert_close(block, probs[:, :, n_text:, :n_text], rtol=1e-5, atol=1e-6)
    # one map per text position (the chat template's, the prompt's words, the padding), summing to 1
    tokens = trace.tokens
    assert len(tokens) == 80 and {t.kind for t in tokens} == {"special", "word", "pad"}
    assert [t.word for t in tokens if t.kind == "word"][:2] == ["a", "red"]
    maps = trace.attention_maps()
    assert maps.shape == (1, 80, 16, 16)  # upsampled to the picture
    torch.testing.assert_close(maps.sum(1), torch.ones_like(maps[:, 0]), rtol=0, atol=1e-5)
    assert trace.attention("red").shape[0] == 1
    same = ex.run(
        PROMPT, num_inference_steps=2, seed=0, guidance_scale=1.0, hooks=edits.reweight("red", 1.0), **SIZE
    )
    assert torch.equal(same.final_latents, trace.final_latents)
    gone = ex.run(
        PROMPT, num_inference_steps=2, seed=0, guidance_scale=1.0, hooks=edits.reweight("red", 0.0), **SIZE
    )
    assert not torch.equal(gone.final_latents, trace.final_latents)
    assert gone.attention("red").abs().max() == 0
    # the layer's output for the image tokens is a hook point too: [B, h·w, C], put back in the sequence
    out = "attn.single_transformer_blocks.0.attn.out.cond"
    seen = []
    kept = ex.run(
        PROMPT, num_inference_steps=2, seed=0, guidance_scale=1.0, **SIZE,
        hooks=Hook(out, lambda x, ctx: seen.append(tuple(x.shape)) or x),
    )  # fmt: skip
    assert seen[0] == (1, 16, 16) and torch.equal(kept.final_latents, trace.final_latents)
    zeroed = ex.run(
        PROMPT, num_inference_steps=2, seed=0, guidance_scale=1.0, **SIZE,
        hooks=Hook(out, lambda x, ctx: torch.zeros_like(x)),
    )  # fmt: skip
    assert not torch.equal(zeroed.final_latents, trace.final_latents)


# ---- widgets ------------------------------------------------------------------------------------------
def texts(widget: W.Widget) -> str:
    found = [widget.value] if isinstance(widget, W.HTML) else []
    for child in getattr(widget, "children", ()):
        found.append(texts(child))
    return " ".join(found)


def errors(widget) -> str:
    return "".join(o.get("text", "") for o in widget.output.outputs)


@pytest.mark.parametrize("which", ["base", "distilled"])
def test_widgets_open_a_flux3_trace(ex, distilled, which, tmp_path):
    explainer = ex if which == "base" else distilled
    trace = explainer.run(PROMPT, num_inference_steps=STEPS, seed=0, **SIZE)
    explorer = StepExplorer(trace)
    assert errors(explorer) == ""
    words = texts(explorer)
    assert "velocity predicted with prompt" in words and "the transformer" in words
    explorer.slider.value = 2
    assert errors(explorer) == ""
    path = tmp_path / "flux3.safetensors"
    trace.save(path)
    assert errors(TracePlayer(Trace.load(path))) == ""
    assert errors(AttentionMaps(trace)) == ""


@pytest.mark.parametrize("make", ["noise_lab", "prompt_swap", "forward_process", "guidance_lab"])
def test_the_other_widgets_build_on_flux3(ex, make):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        widget = {
            "noise_lab": lambda: NoiseLab(ex, PROMPT, num_inference_steps=2),
            "prompt_swap": lambda: PromptSwap(ex, PROMPT, "a blue cone", num_inference_steps=2),
            "forward_process": lambda: ForwardProcess(ex),
            "guidance_lab": lambda: GuidanceLab(ex, PROMPT, num_inference_steps=2),
        }[make]()
    assert errors(widget) == ""


def test_the_default_size_is_the_pipelines(pipe, ex):
    """The family reads the pipeline's prepare-latents step: its default size is the pipeline's."""
    assert ex.family.default_size() == (FLUX3_SIZE, FLUX3_SIZE)
    trace = ex.run(PROMPT, num_inference_steps=1, seed=0, decode=False)
    expected = pipe(
        prompt=PROMPT, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output="latents"
    )
    assert torch.equal(trace.final_latents, expected)
