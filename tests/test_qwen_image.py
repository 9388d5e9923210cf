"""Qwen-Image through the same loop: parity with QwenImagePipeline bit for bit (one branch, true CFG with its
norm rescale, negative prompts, a batch whose prompts and negative prompts differ in length), bit-exact forks,
the chat template's tokens, unpacked hook shapes with the text mask as a hook point, the guidance as
QwenImageGuidance, conventions, masked joint-attention maps, decoding through the 3-D VAE, trace files, the
family's pick, and the widgets on a Qwen-Image trace."""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers import QwenImagePipeline

from diffexplain import Explainer, Trace
from diffexplain.attention import edits
from diffexplain.attention.qwen import QwenAttentionCapture
from diffexplain.errors import TraceKeyError
from diffexplain.families import QwenImage, family_for_pipeline
from diffexplain.families.flux import pack_latents, unpack_latents
from diffexplain.families.qwen_image_text import prefix_token_count
from diffexplain.guiders import CFG, QwenImageGuidance
from diffexplain.guiders.qwen_image import pack
from diffexplain.probe import predict_x0_at
from tests.tiny_qwen_image import QWEN_MAX_SEQUENCE_LENGTH, tiny_qwen_image_parts, tiny_qwen_image_pipeline

PROMPT = "a red square on the left"
STEPS = 3
SIZE = 32  # px: latents [B, 4, 8, 8] unpacked, [B, 16, 16] packed
OPTIONS = {"max_sequence_length": QWEN_MAX_SEQUENCE_LENGTH}
NO_NEGATIVE = "ignore:Qwen-Image. guidance_scale=.* but no negative prompt"  # tested on its own below


@pytest.fixture(scope="module")
def pipe() -> QwenImagePipeline:
    return tiny_qwen_image_pipeline()


@pytest.fixture(scope="module")
def ex(pipe) -> Explainer:
    return Explainer.from_pipeline(pipe, progress=False)


@pytest.fixture(scope="module")
def guided(ex) -> Trace:
    """True CFG with a negative prompt, every hook point kept."""
    return ex.run(PROMPT, num_inference_steps=STEPS, seed=5, negative_prompt="blue", keep="*", **OPTIONS)


def pipeline_latents(pipe: QwenImagePipeline, prompt, seed: int, **kwargs) -> torch.Tensor:
    """QwenImagePipeline's final latents, unpacked with its own ``_unpack_latents``, frame axis dropped."""
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
    return pipe._unpack_latents(packed, SIZE, SIZE, pipe.vae_scale_factor)[:, :, 0]


# w is diffexplain's classic scale = QwenImagePipeline's true_cfg_scale (default 4 for both)
CASES = [
    ("w = 1", dict(guidance_scale=1.0), dict(true_cfg_scale=1.0), False),
    ("defaults: w = 4, no negative prompt", dict(), dict(), False),
    ("true CFG, a negative prompt", dict(negative_prompt="a blue square"), dict(negative_prompt="a blue square"), True),
    ("true CFG, ' '", dict(guidance_scale=2.5, negative_prompt=" "), dict(true_cfg_scale=2.5, negative_prompt=" "), True),
    ("true CFG, [''] is pipe's ''", dict(negative_prompt=[""]), dict(negative_prompt=""), True),
]  # fmt: skip


@pytest.mark.filterwarnings(NO_NEGATIVE)
@pytest.mark.parametrize(("ours", "theirs", "two"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_run_equals_the_pipeline_and_every_fork_replays_it(pipe, ex, ours, theirs, two):
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=3, decode=False, **OPTIONS, **ours)
    assert torch.equal(trace.final_latents, pipeline_latents(pipe, PROMPT, 3, **theirs))
    assert trace.settings["do_cfg"] is two and ("uncond" in trace.conditioning) is two
    assert all(("step.model.uncond" in step.tensors) is two for step in trace.steps)
    assert trace.settings["guider"] == {"name": "qwen_image", "start": 0.0, "stop": 1.0}
    assert set(trace.steps[0].attention) == ({"cond@4x4", "uncond@4x4"} if two else {"cond@4x4"})
    for k in range(STEPS):
        forked = ex.fork(trace, k)
        assert torch.equal(forked.final_latents, trace.final_latents), k
        for i in range(k, STEPS):
            assert torch.equal(forked["step.guidance", i], trace["step.guidance", i])


def test_a_batch_whose_prompts_differ_in_length_equals_the_pipeline(pipe, ex):
    prompts = [PROMPT, "a cat"]
    negatives = [
        "green",
        "a blue circle on the right of a small house",
    ]  # the uncond branch's longest is the other row
    trace = ex.run(prompts, negative_prompt=negatives, guidance_scale=3.0, num_inference_steps=STEPS, seed=1,
                   decode=False, **OPTIONS)  # fmt: skip
    expected = pipeline_latents(pipe, prompts, 1, negative_prompt=negatives, true_cfg_scale=3.0)
    assert torch.equal(trace.final_latents, expected)
    assert trace["step.pred_x0"].shape == (STEPS, 2, 4, 8, 8)
    # each branch is the pipeline's own encoding, the shorter padded with masked zeros to the longer's T
    cond, cond_mask = pipe.encode_prompt(prompts, max_sequence_length=QWEN_MAX_SEQUENCE_LENGTH)
    uncond, uncond_mask = pipe.encode_prompt(negatives, max_sequence_length=QWEN_MAX_SEQUENCE_LENGTH)
    t_cond, t_uncond = cond.shape[1], uncond.shape[1]
    assert t_cond != t_uncond
    width = max(t_cond, t_uncond)
    for branch, embeds, mask in (("cond", cond, cond_mask), ("uncond", uncond, uncond_mask)):
        saved, saved_mask = trace[f"prompt.{branch}"], trace[f"prompt.mask.{branch}"]
        assert saved.shape == (2, width, 16) and saved_mask.shape == (2, width)
        assert torch.equal(saved[:, : embeds.shape[1]], embeds) and torch.equal(
            saved_mask[:, : mask.shape[1]], mask
        )
        assert saved[:, embeds.shape[1] :].abs().max() == 0 if width > embeds.shape[1] else True
    # each branch's maps have that branch's own positions
    maps = trace.steps[0].attention
    assert maps["cond@4x4"].shape[1] == t_cond and maps["uncond@4x4"].shape[1] == t_uncond
    assert [len(t) for t in trace.token_lists()] == [t_cond, int(cond_mask[1].sum())]


def test_w_above_one_without_a_negative_prompt_runs_one_branch_and_says_so(pipe, ex):
    with pytest.warns(UserWarning, match=r"guidance_scale=4 > 1 but no negative prompt, so this run has one "
                      r"branch.*negative_prompt=' '"):  # fmt: skip
        trace = ex.run(PROMPT, num_inference_steps=2, seed=0, **OPTIONS)
    assert trace.settings["guidance_scale"] == 4.0 and trace.settings["do_cfg"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # w = 1, or a negative prompt: no warning
        ex.run(PROMPT, num_inference_steps=2, seed=0, guidance_scale=1.0, **OPTIONS)
        ex.run(PROMPT, num_inference_steps=2, seed=0, negative_prompt="blue", **OPTIONS)
    with pytest.raises(
        TraceKeyError, match=r"guidance_scale=4, but one branch: .*Qwen-Image without a negative"
    ):
        trace.reguide(0, 2.0)
    # a fork that adds a negative prompt turns the second branch on from its step
    forked = ex.fork(trace, 1, negative_prompt="blue")
    assert forked.settings["do_cfg"] is True and "step.model.uncond" in forked.steps[1].tensors


def test_the_chat_template_and_the_tokens_dropped_and_read(pipe, ex, guided):
    tokenizer, template = pipe.tokenizer, pipe.prompt_template_encode
    assert ex.family.template == template and ex.family.template_drop == 34
    before = template.split("{}")[0]
    # the template's own tokens before the prompt, for this tokenizer: not the 34 of Qwen2.5-VL's
    prefix = len(tokenizer(before)["input_ids"])
    assert prefix_token_count(tokenizer, template) == prefix == 51
    model = guided.settings["model"]
    assert model["prompt_template"] == template and model["template_drop"] == 34
    assert model["template_prefix_tokens"] == prefix
    marked = ex.family.template_tokens(PROMPT)
    ids = tokenizer(template.format(PROMPT))["input_ids"]
    assert [t.text for t in marked] == tokenizer.convert_ids_to_tokens(ids)
    assert [t.dropped for t in marked] == [i < 34 for i in range(len(ids))]
    roles = [t.role for t in marked]
    n_prompt = roles.count("prompt")
    assert roles == ["template"] * prefix + ["prompt"] * n_prompt + ["template"] * (
        len(ids) - prefix - n_prompt
    )
    # what the transformer reads: the tokens after the drop, template tokens marked
    tokens = guided.tokens
    assert guided["prompt.cond"].shape[1] == len(tokens) == len(ids) - 34
    assert [t.text for t in tokens] == tokenizer.convert_ids_to_tokens(ids[34:])
    assert {t.source for t in tokens[: prefix - 34]} == {"template"}
    assert [t.word for t in tokens if t.source == "prompt"] == [
        "a",
        "red",
        "square",
        "square",
        "on",
        "the",
        "left",
        "left",
    ]
    after = template.split("{}")[1]  # "<|im_end|>\n<|im_start|>assistant\n", read after the prompt
    suffix = tokenizer.convert_ids_to_tokens(tokenizer(after)["input_ids"])
    assert [t.text for t in tokens[-len(suffix) :]] == suffix and suffix[:3] == [
        "<|im_end|>",
        "Ċ",
        "<|im_start|>",
    ]
    assert {t.kind for t in tokens[-len(suffix) :]} == {"end"}
    # the hidden states before the drop: prompt.cond is their tail
    hidden = ex.family.text_hidden_states(PROMPT)
    assert hidden.shape == (1, len(ids), 16) and torch.equal(hidden[:, 34:], guided["prompt.cond"])
    # the conditioning is the pipeline's own encoding
    embeds, mask = pipe.encode_prompt(PROMPT, max_sequence_length=QWEN_MAX_SEQUENCE_LENGTH)
    assert mask is None and torch.equal(guided["prompt.cond"], embeds)
    assert guided["prompt.mask.cond"].tolist() == [[1] * embeds.shape[1]]
    # a prompt longer than max_sequence_length allows is cut, and the warning names the words dropped
    with pytest.warns(UserWarning, match="truncated|cut|dropped"):
        short = ex.run(PROMPT + " and a green circle", num_inference_steps=2, seed=0, guidance_scale=1.0,
                       max_sequence_length=prefix - 34 + 4)  # fmt: skip
    assert [t.word for t in short.tokens if t.source == "prompt"] == ["a", "red", "square", "square"]


def test_every_hook_sees_unpacked_latents_and_the_model_reads_them_packed(ex):
    seen: dict[str, tuple[int, ...]] = {}

    def record(x, *, ctx):
        seen.setdefault(ctx.name, tuple(x.shape))

    names = ["latents.init", "step.latents", "step.model.cond", "step.model.uncond", "step.guidance",
             "step.pred_x0", "step.next", "step.guider.token_rescale"]  # fmt: skip
    calls = []
    handle = ex.model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw), with_kwargs=True)
    try:
        trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=4, negative_prompt="blue",
                       hooks={name: record for name in names}, **OPTIONS)  # fmt: skip
    finally:
        handle.remove()
    assert seen == {**{name: (1, 4, 8, 8) for name in names[:-1]}, "step.guider.token_rescale": (1, 16, 1)}
    assert trace["decode.image"].shape == (1, 3, SIZE, SIZE)
    # two calls per step (uncond, then cond), each on the packed x_t, σ = t/1000, its own text length
    assert len(calls) == 2 * STEPS
    for i in range(STEPS):
        for call in calls[2 * i : 2 * i + 2]:
            assert torch.equal(call["hidden_states"], pack_latents(trace["step.latents", i]))
            assert call["img_shapes"] == [[(1, 4, 4)]] and call["encoder_hidden_states_mask"] is None
            assert torch.equal(call["timestep"], torch.tensor([trace.steps[i].timestep]) / 1000)
    assert calls[0]["encoder_hidden_states"].shape[1] != calls[1]["encoder_hidden_states"].shape[1]
    assert torch.equal(unpack_latents(calls[0]["hidden_states"], 8, 8), trace["step.latents", 0])


@pytest.mark.filterwarnings(NO_NEGATIVE)
def test_replacements_round_trip_and_a_wrong_shape_is_named(ex):
    plain = ex.run(PROMPT, num_inference_steps=STEPS, seed=6, guidance_scale=1.0, **OPTIONS)
    same = ex.run(PROMPT, num_inference_steps=STEPS, seed=6, guidance_scale=1.0,
                  hooks={"step.latents": lambda x, *, ctx: x.transpose(-1, -2).contiguous().transpose(-1, -2)},
                  **OPTIONS)  # fmt: skip
    assert torch.equal(same.final_latents, plain.final_latents) and len(same.replacements) == STEPS
    with pytest.raises(ValueError, match=r"wrong shape: expected \(1, 4, 8, 8\), given \(1, 16, 16\)"):
        ex.run(PROMPT, num_inference_steps=2, seed=0, guidance_scale=1.0,
               hooks={"step.latents": lambda x, *, ctx: pack_latents(x)}, **OPTIONS)  # fmt: skip
    with pytest.raises(
        ValueError, match=r"latents has shape \[1, 16, 16\] \(QwenImagePipeline's packed layout"
    ):
        ex.run(PROMPT, num_inference_steps=2, latents=pack_latents(plain["latents.init"]), **OPTIONS)
    again = ex.run(PROMPT, num_inference_steps=STEPS, seed=0, guidance_scale=1.0, latents=plain["latents.init"],
                   **OPTIONS)  # fmt: skip
    assert torch.equal(again.final_latents, plain.final_latents)


def test_the_text_mask_is_a_hook_point_the_attention_respects(ex):
    plain = ex.run(PROMPT, num_inference_steps=2, seed=0, guidance_scale=1.0, **OPTIONS)
    red = [t.index for t in plain.tokens if t.word == "red"]

    def hide_red(mask, *, ctx):
        mask = mask.clone()
        mask[:, red] = 0
        return mask

    hidden = ex.run(PROMPT, num_inference_steps=2, seed=0, guidance_scale=1.0,
                    hooks={"prompt.mask.cond": hide_red}, **OPTIONS)  # fmt: skip
    assert [r.name for r in hidden.replacements] == ["prompt.mask.cond"]
    assert not torch.equal(hidden.final_latents, plain.final_latents)
    assert hidden.attention("red").abs().max() == 0 and plain.attention("red").abs().max() > 0
    maps = hidden.attention_maps()  # still a distribution over the positions the image may read
    torch.testing.assert_close(maps.sum(1), torch.ones_like(maps[:, 0]), rtol=0, atol=1e-5)


def test_the_guidance_is_the_pipelines_true_cfg_and_reguides(guided):
    eps_cond, eps_uncond = guided["step.model.cond", 1], guided["step.model.uncond", 1]

    def pipelines_cfg(w: float) -> torch.Tensor:  # the pipeline's CFG block on its packed tensors
        comb = pack(eps_uncond) + w * (pack(eps_cond) - pack(eps_uncond))
        return comb * (
            torch.norm(pack(eps_cond), dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True)
        )

    assert torch.equal(pack(guided["step.guidance", 1]), pipelines_cfg(4.0))
    assert guided["step.guider.token_rescale", 1].shape == (1, 16, 1)
    # reguide: by default the family's own guidance (the run's w gives the run's ε̂), plain CFG when asked
    assert torch.equal(guided.reguide(1, 4.0).eps_guided, guided["step.guidance", 1])
    at_two = guided.reguide(1, 2.0).eps_guided
    assert torch.equal(pack(at_two), pipelines_cfg(2.0))
    assert torch.equal(guided.reguide(1, 2.0, guider=QwenImageGuidance()).eps_guided, at_two)
    assert not torch.equal(guided.reguide(1, 2.0, guider=CFG()).eps_guided, at_two)


def test_the_probe_guides_as_the_family_does(ex):
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    guess = predict_x0_at(ex, x_t, 500.0, PROMPT, guidance_scale=3.0, negative_prompt="blue")
    eps_cond, eps_uncond = guess.eps_cond, guess.eps_uncond
    comb = pack(eps_uncond) + 3.0 * (pack(eps_cond) - pack(eps_uncond))
    rescaled = comb * (
        torch.norm(pack(eps_cond), dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True)
    )
    assert torch.equal(pack(guess.eps_guided), rescaled)
    assert guess.level.b == pytest.approx(-guess.timestep / 1000)


def test_conventions_and_x0_at_the_last_step(guided, tmp_path):
    conventions = guided.conventions
    assert conventions["prediction"] == "flow" and conventions["model_time"] == "σ = t/1000"
    assert "‖v_c‖/‖v̂‖ per packed 2×2 token" in conventions["guidance_formula"]
    assert conventions["pipeline_scale"] == "true_cfg_scale = w" and conventions["classic_offset"] == 0.0
    assert conventions["guidance_scale"] == conventions["pipeline_guidance_scale"] == 4.0
    gap = (guided["step.pred_x0", STEPS - 1] - guided.final_latents).abs().max().item()
    assert gap < 1e-5, gap


@pytest.mark.filterwarnings(NO_NEGATIVE)
def test_refusals(ex):
    with pytest.raises(ValueError, match=r"embedded_guidance=3\.0: Qwen-Image has no embedded guidance"):
        ex.run(PROMPT, num_inference_steps=1, embedded_guidance=3.0, **OPTIONS)
    distilled = Explainer.from_pipeline(tiny_qwen_image_pipeline(guidance_embeds=True), progress=False)
    with pytest.raises(ValueError, match="guidance_embeds=True: Qwen-Image has no embedded guidance"):
        distilled.run(PROMPT, num_inference_steps=1, **OPTIONS)
    with pytest.raises(ValueError, match="max_sequence_length must be between 1 and 1024"):
        ex.run(PROMPT, num_inference_steps=1, max_sequence_length=1025)
    with pytest.raises(ValueError, match=r"num_inference_steps=1: this scheduler's σ schedule is undefined"):
        ex.run(PROMPT, num_inference_steps=1, guidance_scale=1.0, **OPTIONS)
    with pytest.raises(ValueError, match="height .*multiple of 8"):
        ex.run(PROMPT, num_inference_steps=1, height=36, **OPTIONS)


def test_decoding_equals_the_pipelines_picture(pipe, ex):
    trace = ex.run(PROMPT, num_inference_steps=2, seed=2, negative_prompt="blue", **OPTIONS)
    image = pipe(PROMPT, negative_prompt="blue", num_inference_steps=2, generator=torch.Generator().manual_seed(2),
                 output_type="pt", **OPTIONS).images  # fmt: skip
    assert torch.equal((trace["decode.image"] / 2 + 0.5).clamp(0, 1), image)
    # the VAE's normalisation is undone on the way out and applied on the way in
    adapter = ex.family.vae_adapter()
    back = adapter.encode(trace["decode.image"])
    assert back.shape == (1, 4, 8, 8) and ex.family.vae_scale_factor == 4


def test_trace_files_and_the_familys_pick(pipe, guided, ex, tmp_path):
    path = tmp_path / "qwen.safetensors"
    guided.save(path)
    loaded = Trace.load(path, explainer=ex)
    assert loaded.settings["model"]["family"] == "qwen_image" and loaded.hook_names == guided.hook_names
    assert loaded.conditioning["uncond"].keys() == {"embeds", "mask"}
    assert torch.equal(loaded["prompt.mask.uncond"], guided["prompt.mask.uncond"])
    assert torch.equal(ex.fork(loaded, 1).final_latents, guided.final_latents)
    assert family_for_pipeline(pipe) is QwenImage
    parts = tiny_qwen_image_parts()
    built = Explainer(scheduler=parts.pop("scheduler"), progress=False, **parts)
    assert isinstance(built.family, QwenImage) and built.family.default_size() == (512, 512)  # 128 × 4
    pipe.save_pretrained(tmp_path / "qwen")
    folder = Explainer.from_pretrained(tmp_path / "qwen", progress=False)
    assert isinstance(folder.family, QwenImage)
    a = built.run(
        PROMPT,
        num_inference_steps=2,
        seed=0,
        height=SIZE,
        width=SIZE,
        decode=False,
        guidance_scale=1.0,
        **OPTIONS,
    )
    b = folder.run(
        PROMPT,
        num_inference_steps=2,
        seed=0,
        height=SIZE,
        width=SIZE,
        decode=False,
        guidance_scale=1.0,
        **OPTIONS,
    )
    torch.testing.assert_close(a.final_latents, b.final_latents, rtol=1e-5, atol=1e-5)


# ---- attention maps -----------------------------------------------------------------------------------
def test_the_maps_are_the_probabilities_the_model_uses(ex):
    layers = ex.family.attention_layers()
    assert [(layer.name, layer.kind) for layer in layers] == [
        ("transformer_blocks.0.attn", "joint"), ("transformer_blocks.1.attn", "joint")
    ]  # fmt: skip
    point = "attn.transformer_blocks.1.attn.probs.cond"
    attn = layers[1].module
    inputs, outputs = [], []
    handles = [
        attn.register_forward_pre_hook(lambda m, a, kw: inputs.append(kw), with_kwargs=True),
        attn.register_forward_hook(lambda m, a, out: outputs.append(out[0])),
    ]
    prompts = [PROMPT, "a cat"]  # the second row is padded: a mask
    try:
        trace = ex.run(prompts, num_inference_steps=2, seed=0, guidance_scale=1.0, keep=point, **OPTIONS)
    finally:
        for handle in handles:
            handle.remove()
    given, out = inputs[0], outputs[0]
    mask = given["encoder_hidden_states_mask"]
    assert mask is not None and not bool(mask[1].all())
    # every probability over all T + h·w keys, from the queries and keys as the capture forms them
    seen = {name: getattr(attn, name)(given[src]) for name, src in
            (("to_q", "hidden_states"), ("to_k", "hidden_states"), ("add_k_proj", "encoder_hidden_states"))}  # fmt: skip
    query, key = QwenAttentionCapture._queries_keys(attn, seen, given["image_rotary_emb"])
    allowed = torch.cat([mask, torch.ones(2, 16, dtype=torch.bool)], dim=1)[:, None, None, :]
    scores = (query @ key.transpose(-1, -2) / 16**0.5).masked_fill(~allowed, float("-inf"))
    probs = scores.softmax(-1)  # [2, heads, 16, T + 16]
    values = torch.cat(
        [attn.add_v_proj(given["encoder_hidden_states"]), attn.to_v(given["hidden_states"])], dim=1
    )
    values = values.unflatten(-1, (3, 16)).transpose(1, 2)
    by_hand = attn.to_out[0]((probs @ values).transpose(1, 2).flatten(2, 3))
    torch.testing.assert_close(by_hand, out, rtol=1e-5, atol=1e-6)  # these p are the model's
    n_text = given["encoder_hidden_states"].shape[1]
    block = trace[point, 0]
    assert block.shape == (2, 3, 16, n_text)
    torch.testing.assert_close(block, probs[..., :n_text], rtol=1e-5, atol=1e-6)
    assert block[1][..., ~mask[1]].abs().max() == 0  # padding gets no attention
    maps = trace.attention_maps()
    torch.testing.assert_close(maps.sum(1), torch.ones_like(maps[:, 0]), rtol=0, atol=1e-5)


def test_reweight_edits_act_on_the_joint_attention(ex):
    plain = ex.run(PROMPT, num_inference_steps=2, seed=0, negative_prompt="blue", **OPTIONS)
    same = ex.run(
        PROMPT,
        num_inference_steps=2,
        seed=0,
        negative_prompt="blue",
        hooks=edits.reweight("red", 1.0),
        **OPTIONS,
    )
    assert torch.equal(same.final_latents, plain.final_latents)
    gone = ex.run(
        PROMPT,
        num_inference_steps=2,
        seed=0,
        negative_prompt="blue",
        hooks=edits.reweight("red", 0.0),
        **OPTIONS,
    )
    assert not torch.equal(gone.final_latents, plain.final_latents)
    assert gone.attention("red").abs().max() == 0 and plain.attention("red").abs().max() > 0
    assert plain.attention("red").shape == (1, SIZE, SIZE)
