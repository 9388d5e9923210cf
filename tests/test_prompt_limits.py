"""Prompts longer than a text encoder takes (issue #29, part 4): the words cut are named in a warning,
with the encoder and its limit, for every family alike (``diffexplain.prompt_limits``), and the
vocabulary warning leaves them out."""

from __future__ import annotations

import warnings

import pytest

from diffexplain import Explainer, load_default
from diffexplain.prompt_limits import split_at_limit
from tests.conftest import PROMPT
from tests.tiny_families import SD3_MAX_SEQUENCE_LENGTH, tiny_sd3_pipeline
from tests.tiny_parts import tiny_tokenizer

LONG_TAIL = " and a blue square on the right" * 5  # 35 word pieces: past any limit used here


def _messages(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, UserWarning)]


def _cut_messages(record: list[warnings.WarningMessage]) -> list[str]:
    return [m for m in _messages(record) if "tokens (start and end tokens included)" in m]


def test_split_at_limit_cuts_where_the_pipeline_cuts_and_names_a_cut_word_whole():
    tokenizer = tiny_tokenizer()  # BERT word pieces: [CLS] and [SEP] take 2 of the positions
    text = "a red circle on the left"  # 6 word pieces
    assert split_at_limit(tokenizer, text, 8) == (text, "")
    assert split_at_limit(tokenizer, text, 7) == ("a red circle on the", "left")
    ids = tokenizer(text, truncation=True, max_length=7)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red circle on the"  # as the encoder reads it
    pieces = tokenizer.tokenize("a purplish circle")
    assert len(pieces) > 3, pieces  # "purplish" is more than one piece
    read, dropped = split_at_limit(tokenizer, "a purplish circle", 2 + 2)  # room for "a" and a first piece
    assert (read, dropped) == ("a", "purplish circle")


@pytest.fixture(scope="module")
def default_explainer() -> Explainer:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.delenv("DIFFEXPLAIN_MODEL", raising=False)
        return load_default(progress=False)


def test_default_model_names_the_words_cut_and_leaves_them_out_of_the_vocabulary_warning(default_explainer):
    limit = default_explainer.tokenizer.model_max_length  # 32 word pieces, [CLS] and [SEP] included
    prompt = "a red giraffe circle on the left" + LONG_TAIL + " zebra"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        job = default_explainer.start_run(prompt, num_inference_steps=1, seed=0)
    assert job.trace.steps == []  # warned before anything ran
    (cut,) = _cut_messages(record)
    assert cut.startswith("prompt is longer than the text encoder takes")
    assert f"text_encoder (BertModel) reads at most {limit} tokens" in cut
    assert "zebra'" in cut and "giraffe" not in cut
    (vocabulary,) = [m for m in _messages(record) if "small vocabulary" in m]
    assert "'giraffe'" in vocabulary and "zebra" not in vocabulary  # cut anyway: not worth naming


def test_a_prompt_that_fits_gives_no_cut_warning_and_a_cut_negative_prompt_is_named(explainer):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explainer.start_run(PROMPT, num_inference_steps=1, seed=0)  # 16 positions: it fits
    with pytest.warns(UserWarning, match=r"negative_prompt is longer .* reads at most 16 tokens"):
        explainer.start_run(PROMPT, negative_prompt="a blurry" + LONG_TAIL, num_inference_steps=1, seed=0)
    with warnings.catch_warnings(record=True) as record:  # a batch: each distinct prompt once
        warnings.simplefilter("always")
        explainer.start_run([PROMPT, PROMPT + LONG_TAIL, PROMPT + LONG_TAIL], num_inference_steps=1, seed=0)
    (cut,) = _cut_messages(record)
    assert cut.startswith("prompt[1], prompt[2] is longer")
    with pytest.warns(UserWarning, match="on the right'"):  # the conditioning alone, as interventions use it
        explainer.encode_prompt(PROMPT + LONG_TAIL, guidance=False)


def test_a_fork_names_the_words_cut_of_a_new_prompt_only(explainer):
    trace = explainer.run(PROMPT, num_inference_steps=2, seed=0, decode=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explainer.start_fork(trace, 1, guidance_scale=3.0)
    with pytest.warns(UserWarning, match=r"^prompt is longer .* drops '.*on the right'"):
        explainer.start_fork(trace, 1, prompt=PROMPT + LONG_TAIL)


@pytest.fixture(scope="module")
def sd3() -> Explainer:
    return Explainer.from_pipeline(tiny_sd3_pipeline(), progress=False)


def test_sd3_names_each_encoder_that_cuts_with_its_own_limit(sd3):
    prompt = PROMPT + LONG_TAIL
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        sd3.start_run(prompt, num_inference_steps=1, seed=0, max_sequence_length=SD3_MAX_SEQUENCE_LENGTH)
    (cut,) = _cut_messages(record)
    assert "text_encoder (CLIPTextModelWithProjection) reads at most 16 tokens" in cut
    assert "text_encoder_2 (CLIPTextModelWithProjection) reads at most 16 tokens" in cut
    assert f"text_encoder_3 (T5EncoderModel) reads at most {SD3_MAX_SEQUENCE_LENGTH} tokens" in cut
    assert cut.startswith("prompt is longer than the text encoder takes")
    with warnings.catch_warnings(record=True) as record:  # T5 reads 64 positions: all of this prompt
        warnings.simplefilter("always")
        sd3.start_run(prompt, num_inference_steps=1, seed=0, max_sequence_length=64)
    (cut,) = _cut_messages(record)
    assert cut.startswith("prompt is cut by some of the model's text encoders (another one reads all of it)")
    assert "text_encoder_3" not in cut
