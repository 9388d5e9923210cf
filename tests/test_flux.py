"""Flux through the same loop: parity with FluxPipeline (one branch, true CFG, negative prompts, batches,
a model without a guidance embedding), bit-exact forks, unpacked hook shapes and replacements that
round-trip through the packed model call, the embedded guidance as a hook point, trace files, the
family's pick, and the widgets on a Flux trace."""

from __future__ import annotations

import warnings

import ipywidgets as W
import pytest
import torch
from diffusers import FluxPipeline

from diffexplain import Explainer, Trace, interventions
from diffexplain.attention import edits
from diffexplain.families import Flux, family_for_pipeline
from diffexplain.families.flux import pack_latents, unpack_latents
from diffexplain.hooks import Hook
from diffexplain.probe import noise_latents_at, predict_x0_at
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
from tests.tiny_families import FLUX_MAX_SEQUENCE_LENGTH, tiny_flux_parts, tiny_flux_pipeline

STEPS = 4
SIZE = 16  # px: latents [B, 4, 8, 8] unpacked, [B, 16, 16] packed
OPTIONS = {"max_sequence_length": FLUX_MAX_SEQUENCE_LENGTH}


@pytest.fixture(scope="module")
def pipe() -> FluxPipeline:
    return tiny_flux_pipeline()


@pytest.fixture(scope="module")
def ex(pipe) -> Explainer:
    return Explainer.from_pipeline(pipe, progress=False)


def pipeline_latents(pipe: FluxPipeline, prompt, seed: int, **kwargs) -> torch.Tensor:
    """FluxPipeline's final latents, unpacked to [B, C, h, w] with the pipeline's own ``_unpack_latents``."""
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


# w is diffexplain's CFG scale, FluxPipeline's true_cfg_scale; g (embedded_guidance) its guidance_scale
CASES = [
    ("w = 1, default g", dict(guidance_scale=1.0), dict(true_cfg_scale=1.0)),
    ("w = 1, g = 6", dict(guidance_scale=1.0, embedded_guidance=6.0), dict(guidance_scale=6.0)),
    ("true CFG, empty negative", dict(guidance_scale=4.0), dict(true_cfg_scale=4.0, negative_prompt="")),
    (
        "true CFG, a negative prompt",
        dict(guidance_scale=4.0, negative_prompt="a blue square"),
        dict(true_cfg_scale=4.0, negative_prompt="a blue square"),
    ),
]


@pytest.mark.filterwarnings("ignore:Flux. guidance_scale > 1 is true CFG")  # tested below
@pytest.mark.parametrize(("ours", "theirs"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_run_equals_the_pipeline_and_a_fork_replays_it(pipe, ex, ours, theirs):
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=3, decode=False, **OPTIONS, **ours)
    assert torch.equal(trace.final_latents, pipeline_latents(pipe, PROMPT, 3, **theirs))
    two_branches = ours["guidance_scale"] > 1
    assert trace.settings["do_cfg"] is two_branches
    # ε_u exists exactly when there are two branches
    assert all(("step.model.uncond" in step.tensors) is two_branches for step in trace.steps)
    assert ("uncond" in trace.conditioning) is two_branches
    for k in (0, 2, STEPS - 1):
        forked = ex.fork(trace, k)
        assert torch.equal(forked.final_latents, trace.final_latents), k
        for i in range(k, STEPS):
            assert torch.equal(forked["step.guidance", i], trace["step.guidance", i])


def test_batch_with_negative_prompts_equals_the_pipeline(pipe, ex):
    prompts = [PROMPT, "a blue circle"]
    trace = ex.run(
        prompts,
        negative_prompt=["green", "red"],
        guidance_scale=3.0,
        num_inference_steps=STEPS,
        seed=1,
        decode=False,
        **OPTIONS,
    )
    expected = pipeline_latents(pipe, prompts, 1, negative_prompt=["green", "red"], true_cfg_scale=3.0)
    assert torch.equal(trace.final_latents, expected)
    assert trace["step.pred_x0"].shape == (STEPS, 2, 4, 8, 8)
    assert trace["prompt.guidance.uncond"].tolist() == [3.5, 3.5]


def test_true_cfg_without_a_negative_prompt_says_once_what_w_is(pipe):
    fresh = Explainer.from_pipeline(pipe, progress=False)
    with pytest.warns(UserWarning, match=r"true CFG here .*pass embedded_guidance=g"):
        fresh.run(PROMPT, num_inference_steps=1, seed=0, guidance_scale=3.5, **OPTIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per Explainer; a negative prompt or w = 1 never warn
        fresh.run(PROMPT, num_inference_steps=1, seed=0, guidance_scale=3.5, **OPTIONS)
        other = Explainer.from_pipeline(pipe, progress=False)
        other.run(
            PROMPT, num_inference_steps=1, seed=0, guidance_scale=3.5, negative_prompt="blue", **OPTIONS
        )
        other.run(PROMPT, num_inference_steps=1, seed=0, **OPTIONS)


def test_a_model_without_guidance_embedding_equals_the_pipeline():
    pipe = tiny_flux_pipeline(guidance_embeds=False)
    ex = Explainer.from_pipeline(pipe, progress=False)
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=2, decode=False, **OPTIONS)
    assert torch.equal(trace.final_latents, pipeline_latents(pipe, PROMPT, 2))
    assert "guidance" not in trace.conditioning["cond"] and "prompt.guidance.cond" not in trace.run_tensors
    assert trace.settings["options"]["embedded_guidance"] is None
    with pytest.raises(ValueError, match=r"embedded_guidance=3\.5: this Flux transformer has no guidance"):
        ex.run(PROMPT, num_inference_steps=1, seed=0, embedded_guidance=3.5, **OPTIONS)


def test_every_view_and_hook_sees_unpacked_latents_and_the_model_reads_them_packed(ex):
    seen: dict[str, tuple[int, ...]] = {}

    def record(x, *, ctx):
        seen.setdefault(ctx.name, tuple(x.shape))

    names = ["latents.init", "step.latents", "step.model.cond", "step.model.uncond"]
    names += ["step.guidance", "step.pred_x0", "step.next"]
    packed_inputs = []
    handle = ex.model.register_forward_pre_hook(
        lambda module, args, kwargs: packed_inputs.append(kwargs["hidden_states"]), with_kwargs=True
    )
    try:
        trace = ex.run(
            PROMPT,
            num_inference_steps=STEPS,
            seed=4,
            guidance_scale=2.0,
            hooks={name: record for name in names},
            **OPTIONS,
        )
    finally:
        handle.remove()
    assert seen == {name: (1, 4, 8, 8) for name in names}
    assert trace["step.latents"].shape == (STEPS, 1, 4, 8, 8)
    assert trace["decode.image"].shape == (1, 3, 16, 16)
    # two transformer calls per step (one per branch), each on the packed x_t of that step
    assert len(packed_inputs) == 2 * STEPS and packed_inputs[0].shape == (1, 16, 16)
    for i in range(STEPS):
        assert torch.equal(packed_inputs[2 * i], pack_latents(trace["step.latents", i]))
        assert torch.equal(unpack_latents(packed_inputs[2 * i], 8, 8), trace["step.latents", i])
    assert trace["prompt.cond"].shape == (1, FLUX_MAX_SEQUENCE_LENGTH, 96)
    assert trace["prompt.pooled.cond"].shape == (1, 32) and trace["prompt.guidance.cond"].tolist() == [3.5]


def test_replacements_round_trip_through_the_packed_model_call(ex):
    plain = ex.run(PROMPT, num_inference_steps=STEPS, seed=6, **OPTIONS)
    # an identity replacement (a copy) changes nothing, bit for bit
    same = ex.run(
        PROMPT,
        num_inference_steps=STEPS,
        seed=6,
        hooks={"step.latents": lambda x, *, ctx: x.clone()},
        **OPTIONS,
    )
    assert torch.equal(same.final_latents, plain.final_latents) and len(same.replacements) == STEPS
    # the same values in another memory layout (not contiguous) reach the packed model call alike
    strided = ex.run(
        PROMPT,
        num_inference_steps=STEPS,
        seed=6,
        hooks={"step.latents": lambda x, *, ctx: x.transpose(-1, -2).contiguous().transpose(-1, -2)},
        **OPTIONS,
    )
    assert torch.equal(strided.final_latents, plain.final_latents)

    # zero the left half of x_{t−1} after step 1: the next step reads exactly that tensor, in place
    def left_half_zero(x, *, ctx):
        x = x.clone()
        x[..., : x.shape[-1] // 2] = 0
        return x

    hooked = ex.run(
        PROMPT,
        num_inference_steps=STEPS,
        seed=6,
        hooks=[Hook("step.next", left_half_zero, steps=[1])],
        **OPTIONS,
    )
    assert torch.equal(hooked["step.latents", 2], hooked["step.next", 1])
    assert float(hooked["step.latents", 2][..., :4].abs().max()) == 0.0
    assert torch.equal(hooked["step.latents", 2][..., 4:], plain["step.latents", 2][..., 4:])
    # a run from given x_T takes it unpacked, as the trace shows it; FluxPipeline's packed form is refused
    again = ex.run(PROMPT, num_inference_steps=STEPS, seed=0, latents=plain["latents.init"], **OPTIONS)
    assert torch.equal(again.final_latents, plain.final_latents)
    with pytest.raises(ValueError, match=r"latents has shape \[1, 16, 16\] \(FluxPipeline's packed layout"):
        ex.run(PROMPT, num_inference_steps=1, latents=pack_latents(plain["latents.init"]), **OPTIONS)
    # a fork from step 2 with that x_t equals the hooked run
    forked = ex.fork(plain, 2, latents=hooked["step.latents", 2])
    assert torch.equal(forked.final_latents, hooked.final_latents)


def test_embedded_guidance_is_an_input_and_a_hook_point(ex):
    names = [p.name for p in ex.hook_points()]
    for name in (
        "prompt.pooled.cond",
        "prompt.pooled.uncond",
        "prompt.guidance.cond",
        "prompt.guidance.uncond",
    ):
        assert name in names
    assert [n for n in names if n.startswith("attn.")] == [
        f"attn.transformer_blocks.0.attn.{what}.{branch}"
        for what in ("probs", "out")
        for branch in ("cond", "uncond")
    ]
    low = ex.run(PROMPT, num_inference_steps=2, seed=0, embedded_guidance=1.0, **OPTIONS)
    high = ex.run(PROMPT, num_inference_steps=2, seed=0, **OPTIONS)
    assert high.settings["options"]["embedded_guidance"] == 3.5 and high.settings["guidance_scale"] == 1.0
    assert not torch.equal(low.final_latents, high.final_latents)
    # replacing g at its hook point is the same as asking for it
    hooked = ex.run(
        PROMPT,
        num_inference_steps=2,
        seed=0,
        hooks={"prompt.guidance.cond": lambda g, *, ctx: torch.full_like(g, 1.0)},
        **OPTIONS,
    )
    assert torch.equal(hooked.final_latents, low.final_latents)
    assert [r.name for r in hooked.replacements] == ["prompt.guidance.cond"]
    # a fork with that hook changes g from step k on: the steps before are the source's
    forked = ex.fork(high, 1, hooks={"prompt.guidance.cond": lambda g, *, ctx: torch.full_like(g, 1.0)})
    assert torch.equal(forked["step.guidance", 0], high["step.guidance", 0])
    assert not torch.equal(forked["step.guidance", 1], high["step.guidance", 1])
    assert forked["prompt.guidance.cond"].tolist() == [1.0]
    for bad in (-1.0, float("nan"), "3.5"):
        with pytest.raises((TypeError, ValueError), match="embedded_guidance must be a (finite )?number"):
            ex.run(PROMPT, num_inference_steps=1, seed=0, embedded_guidance=bad, **OPTIONS)
    with pytest.raises(ValueError, match="height .*multiple of 4"):
        ex.run(PROMPT, num_inference_steps=1, seed=0, height=18, **OPTIONS)
    with pytest.raises(ValueError, match="unknown scheduler 'flow_heun'; valid names: flow_euler"):
        ex.set_scheduler("flow_heun")


def test_reguide_interventions_and_trace_files(ex, tmp_path):
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=5, guidance_scale=4.0, **OPTIONS)
    assert torch.equal(trace.reguide(1, 4.0).eps_guided, trace["step.guidance", 1])
    hooked = ex.run(
        PROMPT,
        num_inference_steps=STEPS,
        seed=5,
        guidance_scale=4.0,
        hooks=[interventions.cfg_off(steps=[2, 3])],
        **OPTIONS,
    )
    assert torch.equal(hooked["step.guidance", 2], hooked["step.model.cond", 2])
    forked = ex.fork(trace, 2, hooks=[interventions.cfg_off(steps=[2, 3])])
    assert torch.equal(forked.final_latents, hooked.final_latents)
    # a fork that turns guidance off, and one with a new prompt, re-encode what changed
    assert ex.fork(trace, 1, guidance_scale=1.0).settings["do_cfg"] is False
    changed = ex.fork(trace, 1, prompt="a green triangle")
    assert not torch.equal(changed["prompt.pooled.cond"], trace["prompt.pooled.cond"])
    assert torch.equal(changed["prompt.guidance.cond"], trace["prompt.guidance.cond"])

    path = tmp_path / "flux.safetensors"
    trace.save(path)
    loaded = Trace.load(path, explainer=ex)
    assert loaded.hook_names == trace.hook_names and loaded.settings["model"]["family"] == "flux"
    assert loaded.conditioning["uncond"].keys() == {"embeds", "pooled", "guidance"}
    assert torch.equal(loaded["prompt.guidance.cond"], trace["prompt.guidance.cond"])
    assert torch.equal(loaded["step.pred_x0"], trace["step.pred_x0"])
    assert torch.equal(ex.fork(loaded, 1).final_latents, trace.final_latents)


def test_the_family_is_picked_from_pipeline_parts_and_folder(pipe, tmp_path):
    assert family_for_pipeline(pipe) is Flux
    parts = tiny_flux_parts()
    scheduler = parts.pop("scheduler")
    built = Explainer(scheduler=scheduler, progress=False, **parts)
    assert isinstance(built.family, Flux) and built.family.default_size() == (256, 256)  # 128 × 2
    pipe.save_pretrained(tmp_path / "flux")
    loaded = Explainer.from_pretrained(tmp_path / "flux", progress=False)
    assert isinstance(loaded.family, Flux)
    a = built.run(PROMPT, num_inference_steps=2, seed=0, height=SIZE, width=SIZE, decode=False, **OPTIONS)
    b = loaded.run(PROMPT, num_inference_steps=2, seed=0, height=SIZE, width=SIZE, decode=False, **OPTIONS)
    # the same weights; loaded tensors may sit at other alignments (see test_families): float precision
    torch.testing.assert_close(a.final_latents, b.final_latents, rtol=1e-5, atol=1e-5)


# ---- attention maps -----------------------------------------------------------------------------------
def test_joint_attention_maps_are_the_image_to_text_block(pipe, ex):
    layers = ex.family.attention_layers()
    assert [(layer.name, layer.kind) for layer in layers] == [("transformer_blocks.0.attn", "joint")]
    point = "attn.transformer_blocks.0.attn.probs.cond"
    opts = {"max_sequence_length": 8}  # 8 text tokens, 16 image tokens: the block's sides differ
    before = layers[0].module.processor
    inputs = []  # the layer's inputs in a run with the model's own processor
    handle = layers[0].module.register_forward_pre_hook(
        lambda module, args, kwargs: inputs.append(kwargs), with_kwargs=True
    )
    try:
        plain = ex.run(PROMPT, num_inference_steps=2, seed=0, attention_maps=False, **opts)
    finally:
        handle.remove()
    trace = ex.run(PROMPT, num_inference_steps=2, seed=0, keep=point, **opts)
    assert layers[0].module.processor is before  # the model's own processor is back
    # the block as diffusers' FluxAttnProcessor would compute it: text tokens first, rotary positions
    attn, given = layers[0].module, inputs[0]
    text = given["encoder_hidden_states"]
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
    probs = ((q @ k.transpose(-1, -2)) / 8**0.5).softmax(-1)  # [1, heads, 8 + 16, 8 + 16]
    block = trace[point, 0]
    assert block.shape == (1, 4, 16, 8) and (block.sum(-1) < 1).all()
    torch.testing.assert_close(block, probs[:, :, 8:, :8], rtol=1e-5, atol=1e-6)
    # maps: one per T5 token, summing to 1 over the text; the run equals the model's own to float precision
    tokens = trace.tokens
    assert len(tokens) == 8 and {t.source for t in tokens} == {"t5"} and tokens[0].text == "▁a"
    maps = trace.attention_maps()
    assert maps.shape == (1, 8, 16, 16)
    torch.testing.assert_close(maps.sum(1), torch.ones_like(maps[:, 0]), rtol=0, atol=1e-5)
    torch.testing.assert_close(plain.final_latents, trace.final_latents, rtol=1e-5, atol=1e-5)
    # with true CFG both branches get maps, and the run still equals the pipeline to float precision
    guided = ex.run(PROMPT, num_inference_steps=STEPS, seed=3, guidance_scale=4.0, decode=False, **OPTIONS)
    assert set(guided.steps[0].attention) == {"cond@4x4", "uncond@4x4"}
    expected = pipeline_latents(pipe, PROMPT, 3, true_cfg_scale=4.0, negative_prompt="")
    torch.testing.assert_close(guided.final_latents, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(ex.fork(guided, 2).final_latents, guided.final_latents)  # forks with maps: bit-exact
    # edits act on the block: a weight of 1 changes nothing, of 0 removes the word
    same = ex.run(PROMPT, num_inference_steps=2, seed=0, hooks=edits.reweight("red", 1.0), **opts)
    assert torch.equal(same.final_latents, trace.final_latents)
    gone = ex.run(PROMPT, num_inference_steps=2, seed=0, hooks=edits.reweight("red", 0.0), **opts)
    assert not torch.equal(gone.final_latents, trace.final_latents)
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


def test_widgets_open_a_flux_trace(ex, tmp_path):
    trace = ex.run(PROMPT, num_inference_steps=3, seed=0, guidance_scale=3.0, **OPTIONS)
    explorer = StepExplorer(trace)
    assert errors(explorer) == ""
    words = texts(explorer)
    assert "velocity predicted with prompt" in words and "the transformer" in words
    before = explorer.images["x0"].value
    explorer.slider.value = 2
    assert errors(explorer) == "" and explorer.images["x0"].value != before

    path = tmp_path / "flux.safetensors"
    trace.save(path)
    player = TracePlayer(Trace.load(path))
    assert errors(player) == ""


def test_guidance_lab_on_flux_reguides_without_a_model_call(ex):
    widget = GuidanceLab(ex, PROMPT, num_inference_steps=3)
    assert errors(widget) == ""
    assert widget.off.settings["do_cfg"] is False and widget.on.settings["do_cfg"] is True
    # Flux's default w is 1 (no true CFG): the guided side takes the family's comparison scale, not SD's 7.5
    assert widget.on.settings["guidance_scale"] == ex.family.compare_guidance_scale == 4.0
    calls = []
    handle = ex.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        before = widget.strip.value
        widget.scale.value = widget.scale.value + 2
    finally:
        handle.remove()
    assert errors(widget) == "" and calls == [] and widget.strip.value != before


@pytest.mark.parametrize("make", ["noise_lab", "prompt_swap", "forward_process", "attention_maps"])
def test_the_other_widgets_build_on_flux(ex, make):
    widget = {
        "noise_lab": lambda: NoiseLab(ex, PROMPT, num_inference_steps=3),
        "prompt_swap": lambda: PromptSwap(ex, PROMPT, "a blue square", num_inference_steps=3),
        "forward_process": lambda: ForwardProcess(ex),
        "attention_maps": lambda: AttentionMaps(ex.run(PROMPT, num_inference_steps=2, seed=0, **OPTIONS)),
    }[make]()
    assert errors(widget) == ""


def test_the_forward_process_and_probe_use_fluxs_shifted_schedule(ex):
    x0 = torch.zeros(1, 4, 8, 8)
    noisy, t = noise_latents_at(ex, x0, 500, torch.ones_like(x0))
    # x_t = (1 − σ)·x0 + σ·ε with x0 = 0, ε = 1: every value is σ, the σ of the nearest timestep
    assert torch.allclose(noisy, torch.full_like(noisy, float(t) / 1000))
    guess = predict_x0_at(ex, noisy, float(t), PROMPT, guidance_scale=3.0)
    assert guess.pred_x0.shape == (1, 4, 8, 8) and guess.eps_uncond is not None
    assert guess.level.b == pytest.approx(-float(t) / 1000)
