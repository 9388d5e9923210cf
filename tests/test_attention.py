"""Cross-attention: hook points found from the modules, per-step maps in the trace, tokens, edits and files."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor

from diffexplain import Explainer, Trace
from diffexplain.attention import edits
from diffexplain.errors import TraceKeyError
from tests.conftest import PROMPT
from tests.tiny_families import SD3_MAX_SEQUENCE_LENGTH, tiny_sd3_pipeline, tiny_sdxl_pipeline

STEPS = 3


@pytest.fixture(scope="module")
def pipes() -> dict:
    return {"sdxl": tiny_sdxl_pipeline(), "sd3": tiny_sd3_pipeline()}


def processors(explainer: Explainer) -> dict[str, object]:
    return {layer.name: layer.module.processor for layer in explainer.family.attention_layers()}


def first_layer(explainer: Explainer) -> str:
    return explainer.family.attention_layers()[0].name


# ---- hook points and maps -----------------------------------------------------------------------------
def test_every_cross_attention_layer_has_heavy_hook_points(explainer):
    layers = explainer.family.attention_layers()
    assert layers and all(layer.name.endswith("attn2") for layer in layers)
    points = {p.name: p for p in explainer.hook_points()}
    for layer in layers:
        for what in ("probs", "out"):
            assert points[f"attn.{layer.name}.{what}.cond"].heavy
            assert points[f"attn.{layer.name}.{what}.uncond"].cfg_only
    assert points[f"attn.{layers[0].name}.probs.cond"].shape == "[B, heads, h·w, T]"
    trace = explainer.run(PROMPT, num_inference_steps=1, seed=0)
    assert not any(name.startswith("attn.") for name in trace.kept)  # opt-in: not kept by default


def test_maps_sum_to_one_over_tokens_and_equal_an_explicit_softmax(explainer):
    layer = first_layer(explainer)
    module = explainer.family.attention_layers()[0].module
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def grab(mod, args, kwargs):  # the test's own record of the layer's inputs, for its own softmax
        seen.append((args[0].detach().clone(), kwargs["encoder_hidden_states"].detach().clone()))

    handle = module.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        trace = explainer.run(PROMPT, num_inference_steps=STEPS, seed=0, keep=[f"attn.{layer}.probs.*"])
    finally:
        handle.remove()
    maps = trace.attention_maps()  # [B, T, H, W]
    assert maps.shape == (1, len(trace.tokens), trace.settings["height"], trace.settings["width"])
    torch.testing.assert_close(maps.sum(1), torch.ones_like(maps[:, 0]), rtol=0, atol=1e-5)
    for step, (hidden, text) in enumerate(seen):
        heads = module.heads
        query, key = module.to_q(hidden), module.to_k(text)  # [2B, h·w, heads·d], [2B, T, heads·d]
        d = query.shape[-1] // heads
        q = query.view(query.shape[0], -1, heads, d).transpose(1, 2)
        k = key.view(key.shape[0], -1, heads, d).transpose(1, 2)
        expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # [2B, heads, h·w, T]
        torch.testing.assert_close(
            trace[f"attn.{layer}.probs.cond", step], expected[1:], rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(
            trace[f"attn.{layer}.probs.uncond", step], expected[:1], rtol=1e-5, atol=1e-6
        )


def test_maps_are_per_step_per_resolution_and_layer_filters_work(explainer):
    layers = [layer.name for layer in explainer.family.attention_layers()]
    trace = explainer.run(PROMPT, num_inference_steps=STEPS, seed=1, keep="attn.*.probs.cond")
    resolutions = trace.attention_resolutions
    assert sorted(n for names in resolutions.values() for n in names) == sorted(layers)
    assert set(trace.steps[0].attention) == {f"{b}@{r}" for b in ("cond", "uncond") for r in resolutions}
    red = trace.attention("red")
    assert red.shape == (1, trace.settings["height"], trace.settings["width"])
    per_step = [trace.attention("red", steps=i) for i in range(STEPS)]
    assert not torch.equal(per_step[0], per_step[-1])  # the maps are kept per step
    torch.testing.assert_close(red, torch.stack(per_step).mean(0))
    one = next(iter(resolutions))
    by_resolution = trace.attention("red", layers=one)
    by_names = trace.attention("red", layers=resolutions[one])  # from the kept probabilities
    torch.testing.assert_close(by_resolution, by_names, rtol=1e-5, atol=1e-6)
    uncond = trace.attention(0, branch="uncond")  # the empty prompt's start token
    assert uncond.shape == red.shape
    with pytest.raises(ValueError, match="neither a resolution"):
        trace.attention("red", layers="nowhere.*")


def test_tokens_list_every_position_with_words_and_padding(explainer):
    trace = explainer.run("a bluish square, left", num_inference_steps=1, seed=0)
    tokens = trace.tokens
    assert [t.index for t in tokens] == list(range(len(tokens)))
    assert tokens[0].kind == "start" and tokens[-1].kind == "pad" and tokens[-1].word is None
    bluish = [t for t in tokens if t.word == "bluish"]
    assert len(bluish) >= 2 and all(t.kind == "word" for t in bluish)  # a word of several word-pieces
    both = trace.attention("bluish")
    torch.testing.assert_close(both, sum(trace.attention(t.index) for t in bluish))
    assert any(t.word == "," for t in tokens)
    with pytest.raises(ValueError, match=r"'blue' is not a word of the prompt; its words are: a, bluish"):
        trace.attention("blue")
    twice = explainer.run("a red and a red", num_inference_steps=1, seed=0)
    with pytest.raises(ValueError, match="occurs 2 times.*pass a token index"):
        twice.attention("red")
    with pytest.raises(ValueError, match="out of range"):
        trace.attention(999)


def test_batches_find_each_prompts_tokens(explainer):
    trace = explainer.run(["a red square", "a big blue red circle"], num_inference_steps=1, seed=0)
    red = trace.attention("red")
    assert red.shape[0] == 2 and trace.token_lists()[1][4].word == "red"
    with pytest.raises(ValueError, match="prompt 0 of the batch"):
        trace.attention("blue")


def test_guidance_off_has_no_uncond_maps_and_says_why(explainer):
    trace = explainer.run(PROMPT, num_inference_steps=1, seed=0, guidance_scale=1.0)
    assert trace.attention("red").shape[0] == 1
    with pytest.raises(TraceKeyError, match="guidance was off"):
        trace.attention(0, branch="uncond")


def test_without_maps_the_model_is_untouched_and_the_trace_says_so(explainer):
    trace = explainer.run(PROMPT, num_inference_steps=1, seed=0, attention_maps=False)
    assert trace.steps[0].attention == {}
    with pytest.raises(TraceKeyError, match="attention_maps=False"):
        trace.attention("red")


# ---- processors ---------------------------------------------------------------------------------------
def test_processors_are_restored_after_a_run_and_after_an_error(explainer):
    before = processors(explainer)
    explainer.run(PROMPT, num_inference_steps=1, seed=0)
    assert processors(explainer) == before and all(processors(explainer)[n] is p for n, p in before.items())

    def boom(x, *, ctx):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        explainer.run(
            PROMPT, num_inference_steps=2, seed=0, hooks={f"attn.{first_layer(explainer)}.probs.cond": boom}
        )
    assert all(processors(explainer)[n] is p for n, p in before.items())


def test_an_unknown_processor_is_refused_with_a_clear_error(explainer):
    class Custom(AttnProcessor):
        pass

    module = explainer.family.attention_layers()[0].module
    original = module.processor
    module.set_processor(Custom())
    try:
        with pytest.raises(ValueError, match="uses Custom.*attention_maps=False"):
            explainer.run(PROMPT, num_inference_steps=1, seed=0)
        explainer.run(PROMPT, num_inference_steps=1, seed=0, attention_maps=False)  # still runs without maps
    finally:
        module.set_processor(original)


def test_with_maps_a_run_equals_the_pipeline_bit_for_bit(parts):
    # The maps are computed beside each text layer's own processor (SDPA here), whose output is kept:
    # the default run (maps on) is the pipeline's, bit for bit, and so is a run without maps.
    explainer = Explainer(**parts, progress=False)
    trace = explainer.run(PROMPT, num_inference_steps=STEPS, seed=4, decode=False)
    assert trace.attention("red").abs().sum() > 0  # the maps were recorded
    pipe = StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        PROMPT, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(4), output_type="latent"
    ).images
    assert torch.equal(trace.final_latents, expected)
    plain = explainer.run(PROMPT, num_inference_steps=STEPS, seed=4, decode=False, attention_maps=False)
    assert torch.equal(plain.final_latents, trace.final_latents)


def test_maps_equal_an_explicit_softmax(parts):
    # p beside the layer is the explicit AttnProcessor's p: the maps of a run whose text layers use
    # AttnProcessor (p written out) equal those of a run with the default SDPA processors.
    explainer = Explainer(**parts, progress=False)
    sdpa = explainer.run(PROMPT, num_inference_steps=2, seed=4, decode=False)
    saved = processors(explainer)
    for layer in explainer.family.attention_layers():
        layer.module.set_processor(AttnProcessor())
    try:
        plain = explainer.run(PROMPT, num_inference_steps=2, seed=4, decode=False)
    finally:
        for layer in explainer.family.attention_layers():
            layer.module.set_processor(saved[layer.name])
    torch.testing.assert_close(sdpa.attention("red"), plain.attention("red"), rtol=1e-4, atol=1e-5)


# ---- edits --------------------------------------------------------------------------------------------
def test_a_reweight_of_one_is_bit_identical_and_of_zero_changes_the_image(explainer):
    base = explainer.run(PROMPT, num_inference_steps=STEPS, seed=2)
    same = explainer.run(PROMPT, num_inference_steps=STEPS, seed=2, hooks=edits.reweight("red", 1.0))
    assert torch.equal(same.final_latents, base.final_latents) and torch.equal(same.image, base.image)
    assert same.replacements and same.replacements[0].name.startswith("attn.")
    gone = explainer.run(PROMPT, num_inference_steps=STEPS, seed=2, hooks=edits.reweight("red", 0.0))
    assert not torch.equal(gone.image, base.image)
    assert gone.attention("red").abs().max() == 0  # the maps record the attention the model used
    forked = explainer.fork(base, 1, hooks=edits.reweight("red", 1.0))
    assert torch.equal(forked.final_latents, base.final_latents)  # a fork with maps is bit-exact too


def test_reweight_respects_steps_and_layers(explainer):
    base = explainer.run(PROMPT, num_inference_steps=STEPS, seed=2)
    resolution = next(iter(base.attention_resolutions))
    some = explainer.run(
        PROMPT,
        num_inference_steps=STEPS,
        seed=2,
        hooks=edits.reweight("red", 0.0, steps=[1], layers=resolution),
    )
    assert torch.equal(some["step.pred_x0", 0], base["step.pred_x0", 0])
    assert some.attention("red", steps=1, layers=resolution).abs().max() == 0
    assert some.attention("red", steps=2, layers=resolution).abs().max() > 0


def test_replace_maps_with_the_same_trace_is_identity_and_with_another_changes(explainer):
    keep = "attn.*.probs.cond"
    base = explainer.run(PROMPT, num_inference_steps=STEPS, seed=2, keep=keep)
    again = explainer.run(PROMPT, num_inference_steps=STEPS, seed=2, hooks=edits.replace_maps(base))
    assert torch.equal(again.final_latents, base.final_latents)
    other = explainer.run("a blue circle on the right", num_inference_steps=STEPS, seed=5)
    with pytest.warns(UserWarning, match="per-resolution maps.*approximation"):
        swapped = explainer.fork(base, 0, hooks=edits.replace_maps(other))  # other's per-resolution maps
    assert not torch.equal(swapped.final_latents, base.final_latents)
    torch.testing.assert_close(swapped.attention_maps(), other.attention_maps(), rtol=1e-5, atol=1e-5)
    with pytest.warns(UserWarning):
        mapped = explainer.fork(base, 0, hooks=edits.replace_maps(other, tokens={"red": "blue"}))
    torch.testing.assert_close(mapped.attention("red"), other.attention("blue"), rtol=1e-5, atol=1e-5)
    short = explainer.run(PROMPT, num_inference_steps=2, seed=2)
    with pytest.raises(ValueError, match="source trace has 2 steps, this run 3"):
        explainer.run(PROMPT, num_inference_steps=STEPS, seed=2, hooks=edits.replace_maps(short))


def test_confine_keeps_a_token_inside_its_mask(explainer):
    h, w = explainer.family.default_size()
    mask = torch.zeros(h, w)
    mask[:, : w // 2] = 1  # the left half
    trace = explainer.run(PROMPT, num_inference_steps=STEPS, seed=2, hooks=edits.confine("red", mask))
    red = trace.attention("red", layers=next(iter(trace.attention_resolutions)))
    assert red[..., : w // 4].min() > 0 and red[..., -(w // 4) :].abs().max() == 0
    with pytest.raises(ValueError, match="mask must be a 2-D tensor"):
        edits.confine("red", torch.ones(1, h, w))


def test_attention_hook_names_are_checked_against_the_model(explainer):
    with pytest.raises(ValueError, match="no attention hook point of this model matches 'attn.nowhere.*'"):
        explainer.run(PROMPT, num_inference_steps=1, seed=0, hooks={"attn.nowhere.*": lambda x, *, ctx: None})
    with pytest.raises(TypeError, match="factor"):
        edits.reweight("red", "2")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="factor"):
            edits.reweight("red", bad)
        with pytest.raises(ValueError, match="outside"):
            edits.confine("red", torch.ones(4, 4), outside=bad)
    with pytest.raises(ValueError, match="outside"):
        edits.confine("red", torch.ones(4, 4), outside=1.5)


# ---- files --------------------------------------------------------------------------------------------
def test_trace_files_round_trip_with_maps_and_tokens(explainer, tmp_path):
    trace = explainer.run(
        PROMPT,
        num_inference_steps=STEPS,
        seed=3,
        keep=["step.*", f"attn.{first_layer(explainer)}.probs.cond"],
    )
    path = tmp_path / "maps.safetensors"
    trace.save(path)
    loaded = Trace.load(path, explainer=explainer)
    assert loaded.tokens == trace.tokens and loaded.attention_resolutions == trace.attention_resolutions
    assert torch.equal(loaded.attention("red"), trace.attention("red"))
    layer = first_layer(explainer)
    assert torch.equal(loaded[f"attn.{layer}.probs.cond", 1], trace[f"attn.{layer}.probs.cond", 1])
    assert torch.equal(explainer.fork(loaded, 1).final_latents, trace.final_latents)
    plain = explainer.run(PROMPT, num_inference_steps=STEPS, seed=3, attention_maps=False)
    plain.save(tmp_path / "plain.safetensors")  # its hook points name the layers, but no maps were kept
    again = Trace.load(tmp_path / "plain.safetensors", explainer=explainer)
    assert again.hook_names == plain.hook_names and again.steps[0].attention == {}
    assert torch.equal(explainer.fork(again, 1).final_latents, plain.final_latents)  # without maps, as made
    half = explainer.run(PROMPT, num_inference_steps=STEPS, seed=3, store_dtype=torch.float16)
    assert half.steps[0].attention["cond@" + next(iter(half.attention_resolutions))].dtype == torch.float16


# ---- other families -----------------------------------------------------------------------------------
def test_sdxl_maps_and_parity_with_plain_attention(pipes):
    pipe = pipes["sdxl"]
    explainer = Explainer.from_pipeline(pipe, progress=False)
    trace = explainer.run(PROMPT, num_inference_steps=2, seed=0, decode=False)
    maps = trace.attention_maps()
    torch.testing.assert_close(maps.sum(1), torch.ones_like(maps[:, 0]), rtol=0, atol=1e-5)
    saved = processors(explainer)
    pipe.unet.set_attn_processor(AttnProcessor())
    try:
        expected = pipe(
            PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent"
        ).images
    finally:
        for layer in explainer.family.attention_layers():
            layer.module.set_processor(saved[layer.name])
    plain = Explainer.from_pipeline(pipe, progress=False).run(
        PROMPT, num_inference_steps=2, seed=0, decode=False, attention_maps=False
    )
    torch.testing.assert_close(trace.final_latents, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain.final_latents, trace.final_latents, rtol=1e-4, atol=1e-4)


def test_sd3_joint_attention_gives_image_to_text_maps(pipes):
    explainer = Explainer.from_pipeline(pipes["sd3"], progress=False)
    layers = explainer.family.attention_layers()
    assert layers and all(layer.kind == "joint" for layer in layers)
    before = processors(explainer)
    opts = {"max_sequence_length": SD3_MAX_SEQUENCE_LENGTH}
    trace = explainer.run(
        PROMPT, num_inference_steps=2, seed=0, keep=f"attn.{layers[0].name}.probs.cond", **opts
    )
    assert all(processors(explainer)[n] is p for n, p in before.items())
    tokens = trace.tokens
    clip_length = explainer.family.parts["tokenizer"].model_max_length
    assert len(tokens) == clip_length + SD3_MAX_SEQUENCE_LENGTH and {t.source for t in tokens} == {
        "clip",
        "t5",
    }
    maps = trace.attention_maps()
    assert maps.shape[1] == len(tokens)
    torch.testing.assert_close(maps.sum(1), torch.ones_like(maps[:, 0]), rtol=0, atol=1e-5)
    block = trace[f"attn.{layers[0].name}.probs.cond", 0]  # as the model computed it: < 1 over the text
    assert block.shape[-1] == len(tokens) and (block.sum(-1) < 1).all()
    red = trace.attention("red")  # its CLIP and T5 tokens together
    assert red.shape == (1, trace.settings["height"], trace.settings["width"])
    plain = explainer.run(PROMPT, num_inference_steps=2, seed=0, attention_maps=False, **opts)
    torch.testing.assert_close(plain.final_latents, trace.final_latents, rtol=1e-4, atol=1e-4)
    same = explainer.run(PROMPT, num_inference_steps=2, seed=0, hooks=edits.reweight("red", 1.0), **opts)
    assert torch.equal(same.final_latents, trace.final_latents)
    gone = explainer.run(PROMPT, num_inference_steps=2, seed=0, hooks=edits.reweight("red", 0.0), **opts)
    assert not torch.equal(gone.final_latents, trace.final_latents)


# ---- review: edge cases -------------------------------------------------------------------------------
def test_a_run_inside_a_hook_is_not_captured_by_the_outer_run(explainer):
    clean = explainer.run(PROMPT, num_inference_steps=STEPS, seed=0)
    alone = explainer.run("a blue circle", num_inference_steps=2, seed=1, attention_maps=False)
    inner = []

    def nested(x, *, ctx):
        if ctx.step == 0:
            inner.append(explainer.run("a blue circle", num_inference_steps=2, seed=1, attention_maps=False))

    outer = explainer.run(PROMPT, num_inference_steps=STEPS, seed=0, hooks={"step.model.cond": nested})
    assert torch.equal(inner[0].final_latents, alone.final_latents)  # the model's own processors ran
    assert torch.equal(outer.attention_maps(), clean.attention_maps())  # nothing added to the outer maps
    assert torch.equal(outer.final_latents, clean.final_latents)


def test_kept_probabilities_hold_only_their_own_memory(explainer):
    layer = first_layer(explainer)
    trace = explainer.run(PROMPT, num_inference_steps=1, seed=0, keep=f"attn.{layer}.probs.cond")
    kept = trace[f"attn.{layer}.probs.cond", 0]
    assert kept.untyped_storage().nbytes() == kept.nbytes  # not a view of both branches' buffer


def test_a_fork_that_changes_the_prompt_reads_its_own_steps(explainer):
    trace = explainer.run(PROMPT, num_inference_steps=4, seed=0)
    fork = explainer.fork(trace, 2, prompt="a blue square on the right")
    per_step = torch.stack([fork.attention("blue", steps=i) for i in (2, 3)]).mean(0)
    torch.testing.assert_close(fork.attention("blue"), per_step)  # the default: steps 2..3 only
    with pytest.raises(ValueError, match=r"steps \[0\] were copied from the trace this fork started from"):
        fork.attention("blue", steps=0)
    same = explainer.fork(trace, 2)  # no prompt change: every step's maps are this trace's
    torch.testing.assert_close(same.attention("red"), trace.attention("red"))
    plain = explainer.run(PROMPT, num_inference_steps=4, seed=0, attention_maps=False)
    mapped = explainer.fork(plain, 2, attention_maps=True)
    assert mapped.attention("red").shape[0] == 1
    with pytest.raises(ValueError, match="choose steps 2..3"):
        mapped.attention("red", steps=1)


def test_layer_filters_of_edits_are_checked(explainer):
    for bad in ("up_block.*", "3x3", 7):
        with pytest.raises(ValueError, match="matches no attention layer and no resolution"):
            explainer.run(PROMPT, num_inference_steps=1, seed=0, hooks=edits.reweight("red", 0.0, layers=bad))


def test_unknown_and_special_tokens_are_labelled(explainer):
    from diffexplain.attention.tokens import tokenize
    from tests.tiny_families import tiny_t5_tokenizer

    tokens = tokenize(explainer.tokenizer, "a ☃ circle", 8)
    assert [t.kind for t in tokens[:5]] == ["start", "word", "word", "word", "end"] and tokens[2].word == "☃"
    assert tokenize(tiny_t5_tokenizer(), "", 3)[0].kind == "end"  # T5 has no start token


def test_sdxl_empty_negative_prompt_is_zeros(pipes):
    trace = Explainer.from_pipeline(pipes["sdxl"], progress=False).run(PROMPT, num_inference_steps=1, seed=0)
    uncond = trace.token_lists("uncond")[0]
    assert all(t.text == "<zeros>" and t.kind == "pad" for t in uncond)
    maps = trace.attention_maps(branch="uncond")
    torch.testing.assert_close(maps, torch.full_like(maps, 1 / maps.shape[1]))  # zero keys: read evenly


def test_sd3_replace_maps_fallback_keeps_the_texts_share(pipes):
    explainer = Explainer.from_pipeline(pipes["sd3"], progress=False)
    opts = {"max_sequence_length": SD3_MAX_SEQUENCE_LENGTH}
    layer = explainer.family.attention_layers()[0].name
    keep = f"attn.{layer}.probs.cond"
    source = explainer.run(PROMPT, num_inference_steps=2, seed=0, **opts)
    plain = explainer.run(PROMPT, num_inference_steps=2, seed=0, keep=keep, **opts)
    with pytest.warns(UserWarning):
        edited = explainer.run(
            PROMPT, num_inference_steps=2, seed=0, keep=keep, hooks=edits.replace_maps(source), **opts
        )
    mass, before = edited[keep, 0].sum(-1), plain[keep, 0].sum(-1)
    torch.testing.assert_close(mass, before, rtol=1e-4, atol=1e-5)
