"""One run's attention capture: hook points inside the denoiser, and the per-step maps a trace keeps.

Notation (per text-attention layer L, for one branch, cond or uncond)::

    p_L[b, head, q, k]   attention probability of image query q (on L's rows×cols grid) for text token k
    m_r[b, k, y, x]      = mean over heads and over the layers at resolution r of p_L[b, ·, (y, x), k]

Every row of p sums to 1 over the tokens (all T of them: special and padding tokens too), so every
pixel of m sums to 1 over k. For SD3's joint attention p is the image → text block, renormalised
over the text tokens for the maps (the hook points carry it as the model computed it).

The capture is installed for one run and removed when it ends, even on an error: the layers' own
processors are set back (``Attention.set_processor``), the very same objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from diffexplain.attention.layers import PREFIX, AttentionLayer, grid_of, resolution_name
from diffexplain.attention.processors import (
    PROCESSOR_WRAPPERS,
    CrossAttentionCapture,
    JointAttentionCapture,
    check_original,
)
from diffexplain.attention.single_stream import SingleStreamCapture

if TYPE_CHECKING:
    from diffexplain.sites import Sites


WRAPPERS = {"cross": CrossAttentionCapture, "joint": JointAttentionCapture, "single": SingleStreamCapture}
"""The processor wrapper of each layer kind (``AttentionLayer.kind``); "single": FLUX.3's joint sequence."""


class AttentionCapture:
    """Routes each layer's probabilities and output through the hook sites and sums the maps of a step."""

    def __init__(
        self,
        layers: tuple[AttentionLayer, ...],
        sites: Sites,
        *,
        batch_size: int,
        do_cfg: bool,
        latent_size: tuple[int, int],
        maps: bool,
    ) -> None:
        self.layers = layers
        self.sites = sites
        self.batch_size = batch_size
        self.do_cfg = do_cfg
        self.latent_size = latent_size  # (h, w) of x_t: each layer's grid is found from it
        self.maps = maps
        self.kinds = {layer.name: layer.kind for layer in layers}
        trace = sites.trace
        self.wanted = frozenset(  # hook points some hook or keep= asks for: only these are split out
            name
            for name in trace.hook_names
            if name.startswith(PREFIX) and (sites.hooks.has(name) or name in trace.kept)
        )
        self.resolutions: dict[str, str] = {}  # layer → "16x16", filled as the layers run
        self.active = False  # True only inside this run's model call (another run's calls pass through)
        self._rows_seen: dict[
            tuple[str, str], int
        ] = {}  # (layer, what) → rows of this model call seen so far
        self._sums: dict[tuple[str, str], torch.Tensor] = {}  # (branch, resolution) → Σ_L mean_heads p_L
        self._counts: dict[tuple[str, str], int] = {}

    # ---- installing -----------------------------------------------------------------------------
    @contextmanager
    def installed(self) -> Iterator[AttentionCapture]:
        """Wrap every layer's processor for the ``with`` block; the originals come back on exit."""
        originals = [(layer, layer.module.processor) for layer in self.layers]
        for layer, processor in originals:
            check_original(layer.name, processor, layer.kind)
        try:
            for layer, processor in originals:
                wrapper = PROCESSOR_WRAPPERS.get(type(processor).__name__) or WRAPPERS.get(
                    layer.kind, CrossAttentionCapture
                )
                layer.module.set_processor(wrapper(processor, layer.name, self))
            yield self
        finally:
            for layer, processor in originals:
                layer.module.set_processor(processor)

    # ---- inside the model call ------------------------------------------------------------------
    @contextmanager
    def model_call(self) -> Iterator[None]:
        """Mark the ``with`` block as this run's model call: only there do the wrappers capture."""
        self.active, self._rows_seen = True, {}
        try:
            yield
        finally:
            self.active = False

    def _site(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The hooks at ``name``; a run started inside one of them is not this run's call."""
        self.active = False
        try:
            return self.sites(name, x)
        finally:
            self.active = True

    def _branches(
        self, x: torch.Tensor, layer: str, what: str
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(uncond, cond) rows of a tensor of this model call, either half None where the call lacks it.

        The loop's model input is [uncond; cond] (2B rows) with guidance, else [cond]. A family may call
        the model on it in one batch or one branch at a time (Flux, as its pipeline does): the rows a
        layer has seen so far in this model call say which branch a call holds.
        """
        n, b = x.shape[0], self.batch_size
        total = 2 * b if self.do_cfg else b
        first = self._rows_seen.get((layer, what), 0)
        if n not in (b, total) or first + n > total:
            raise RuntimeError(
                f"attention layer {layer!r} saw a batch of {n} after {first} rows of this step, expected "
                f"{total} in all ({'uncond and cond' if self.do_cfg else 'cond'} of {b} prompts)"
            )
        self._rows_seen[(layer, what)] = (first + n) % total
        if not self.do_cfg:
            return None, x
        if n == total:
            return x[:b], x[b:]
        return (x, None) if first == 0 else (None, x)

    def _through_sites(
        self, layer: str, what: str, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Run the hooks of ``attn.L.what.{cond,uncond}`` on the branches; returns (x', uncond', cond')."""
        uncond, cond = self._branches(x, layer, what)
        cond_name, uncond_name = f"{PREFIX}{layer}.{what}.cond", f"{PREFIX}{layer}.{what}.uncond"
        new_cond = cond
        if cond is not None and cond_name in self.wanted:
            new_cond = self._site(cond_name, cond)
        new_uncond = uncond
        if uncond is not None and uncond_name in self.wanted:
            new_uncond = self._site(uncond_name, uncond)
        if new_cond is cond and new_uncond is uncond:
            return x, uncond, cond
        parts = [part for part in (new_uncond, new_cond) if part is not None]
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), new_uncond, new_cond

    def reads_probs(self, layer: str) -> bool:
        """Whether p of ``layer`` is needed: for the maps, or for a hook or ``keep=`` at its probs points."""
        return self.maps or any(
            f"{PREFIX}{layer}.probs.{branch}" in self.wanted for branch in ("cond", "uncond")
        )

    def probs(self, layer: str, probs: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """p of one layer, [2B or B, heads, h·w, T]: hooks may replace each branch; then summed into the maps.

        ``keep`` [2B or B, T]: the text tokens an attention mask lets through (Chroma's), the same rows as
        ``probs``; the maps leave the others out (None: every token)."""
        probs, uncond, cond = self._through_sites(layer, "probs", probs)
        if layer not in self.resolutions:
            self.resolutions[layer] = resolution_name(*grid_of(probs.shape[2], *self.latent_size))
        if self.maps:
            resolution = self.resolutions[layer]
            both = cond is not None and uncond is not None
            b = self.batch_size
            for branch, x in (("cond", cond), ("uncond", uncond)):
                if x is None:
                    continue
                kept = keep if keep is None or not both else (keep[b:] if branch == "cond" else keep[:b])
                if kept is not None:
                    x = x * kept[:, None, None, :].to(x.dtype)  # masked tokens: no share of the map
                self._add(branch, resolution, x, joint=self.kinds[layer] != "cross")
        return probs

    def output(self, layer: str, out: torch.Tensor) -> torch.Tensor:
        """The layer's output for the image tokens, [2B or B, h·w, C]: hooks may replace each branch."""
        return self._through_sites(layer, "out", out)[0]

    def _add(self, branch: str, resolution: str, probs: torch.Tensor, *, joint: bool) -> None:
        mean = probs.detach().float().mean(dim=1)  # over heads: [B, h·w, T]
        if joint:
            mean = mean / mean.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        key = (branch, resolution)
        self._sums[key] = mean if key not in self._sums else self._sums[key] + mean
        self._counts[key] = self._counts.get(key, 0) + 1

    # ---- between steps --------------------------------------------------------------------------
    def finish_step(self) -> dict[str, torch.Tensor]:
        """This step's maps, ``"cond@16x16"`` → [B, T, rows, cols] (mean over heads and layers); then reset."""
        maps = {}
        for (branch, resolution), total in self._sums.items():
            rows, cols = (int(s) for s in resolution.split("x"))
            mean = total / self._counts[(branch, resolution)]  # [B, h·w, T]
            maps[f"{branch}@{resolution}"] = mean.transpose(1, 2).reshape(mean.shape[0], -1, rows, cols)
        self._sums, self._counts = {}, {}
        return maps

    def layers_by_resolution(self) -> dict[str, list[str]]:
        """Resolution → the layers there, as found in the run (what each map averages over)."""
        by_resolution: dict[str, list[str]] = {}
        for layer in self.layers:
            if layer.name in self.resolutions:
                by_resolution.setdefault(self.resolutions[layer.name], []).append(layer.name)
        return by_resolution


def attention_settings(
    family: Any, plan: Any, layers: tuple[AttentionLayer, ...], first_step: dict[str, int]
) -> dict[str, Any]:
    """What a trace records so that its maps can be read: the layers, every prompt's tokens, and per
    branch the first step whose maps index those tokens (a fork that changed the prompt: k)."""
    from diffexplain.attention.layers import describe_layers
    from diffexplain.attention.tokens import tokens_to_json
    from diffexplain.families.sd import uncond_prompts

    prompts = [plan.prompt] if isinstance(plan.prompt, str) else list(plan.prompt)
    tokens = {"cond": tokens_to_json(family.prompt_tokens(p, plan.options) for p in prompts)}
    if plan.do_cfg:
        negatives = uncond_prompts(plan.negative_prompt, len(prompts))
        tokens["uncond"] = tokens_to_json(family.negative_prompt_tokens(p, plan.options) for p in negatives)
    return {
        "maps": plan.attention_maps,
        "layers": describe_layers(layers),
        "resolutions": {},
        "tokens": tokens,
        "first_step": first_step,
    }
