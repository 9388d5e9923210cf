"""The trace: a step × stage cache of every tensor the loop computed, plus what a fork needs to restart.

``trace["step.pred_x0", 5]`` is x̂0 at loop step 5; ``trace["step.pred_x0"]`` stacks all steps into
[S, B, C, h, w]; ``trace["prompt.cond"]`` is a run-level tensor. Files: ``trace_io`` (which needs no import of this module).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffexplain.attention import maps as reading
from diffexplain.attention.maps import LayerFilter
from diffexplain.attention.tokens import Token
from diffexplain.conventions import conventions_of_run
from diffexplain.errors import TraceKeyError
from diffexplain.fingerprint import SCHEME
from diffexplain.hooks import Replacement
from diffexplain.names import HOOK_POINTS, HookPoint, current_name, resolve_names, unknown_name_message
from diffexplain.noise_levels import NoiseLevel
from diffexplain.records import StepRecord
from diffexplain.reguide import Reguided, reguide
from diffexplain.settings import RunSettings
from diffexplain.step_scalars import STEP_SCALARS
from diffexplain.trace_io import load_trace, save_trace
from diffexplain.trace_memory import all_tensors, human_bytes, memory_per_step, moved, unique_bytes

if TYPE_CHECKING:
    from PIL import Image

    from diffexplain.explainer import Explainer
    from diffexplain.guiders.base import Guider
    from diffexplain.previews import Previews


def resolve_keep(
    keep: str | Iterable[str] | None, points: tuple[HookPoint, ...] = HOOK_POINTS
) -> frozenset[str]:
    """Hook point names selected by ``keep=`` (names or glob patterns); None keeps all but the heavy ones.

    A heavy point is kept only when ``keep=`` names it exactly, or by a glob that matches heavy
    points only (``"attn.*.probs.cond"``); a glob such as ``"*"`` does not pull them in.
    """
    if keep is None:
        return frozenset(p.name for p in points if not p.heavy)
    if isinstance(keep, str):
        keep = [keep]
    names = tuple(p.name for p in points)
    heavy = {p.name for p in points if p.heavy}
    chosen: set[str] = set()
    for pattern in keep:
        matches = resolve_names(pattern, names)
        only_heavy = all(m in heavy for m in matches)  # e.g. "attn.*.probs.cond": asked for by name
        chosen.update(m for m in matches if m not in heavy or len(matches) == 1 or only_heavy)
    return frozenset(chosen)


class Trace:
    """Every tensor of one run by hook point and step, the settings, and the restart state for forks."""

    def __init__(
        self,
        settings: RunSettings | dict[str, Any],
        *,
        keep: str | Iterable[str] | None = None,
        store_dtype: torch.dtype | None = None,
        points: tuple[HookPoint, ...] = HOOK_POINTS,
    ) -> None:
        # prompt, steps, guidance_scale, seed, scheduler class and config, model... (typed, frozen)
        self.run_settings: RunSettings = (
            settings if isinstance(settings, RunSettings) else RunSettings.from_json(settings)
        )
        self.hook_points: tuple[HookPoint, ...] = points  # the names it was made with (loop + family)
        self._points = {p.name: p for p in points}
        self.kept: frozenset[str] = resolve_keep(keep, points)
        self.store_dtype: torch.dtype | None = store_dtype
        # run-level hook points: prompt.cond, prompt.uncond, latents.init, decode.image
        self.run_tensors: dict[str, torch.Tensor] = {}
        self.steps: list[StepRecord] = []
        self.final_latents: torch.Tensor | None = None  # latents after the last step     [B, C, h, w]
        # restart state, full precision: each branch's conditioning by key ("cond" → {"embeds": ...})
        self.conditioning: dict[str, dict[str, torch.Tensor]] = {}
        # inpainting's (diffexplain.inpaint.STATE_KEYS): the mask, and the picture's latents and noise
        # (a regular U-Net) or the masked picture's latents (an inpainting U-Net); {} otherwise
        self.inpainting: dict[str, torch.Tensor] = {}
        self.replacements: list[Replacement] = []
        self.status: str = "running"  # "complete" | "interrupted" (| "running" while the loop runs)
        self.message: str | None = None  # for interrupted traces: what happened, and where
        self.forked_from: int | None = None  # the step a fork restarted at
        self.explainer: Explainer | None = None  # the Explainer that made it (not saved)
        self.fingerprint_source: Any = None  # a fingerprint.LazyFingerprint of the weights the run used
        self.previews: Previews | None = None  # decoded pictures of x_t and x̂0 per step (made by save)
        self._previews_too_slow: str | None = None  # why they were left out (not timed again)
        self._stored: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()  # id(src) -> copy

    @property
    def settings(self) -> dict[str, Any]:
        """The run's settings as JSON (a new dict: ``run_settings`` is the typed, frozen record)."""
        return self.run_settings.to_json()

    # ---- building (used by the loop) -------------------------------------------------------------
    def store(self, x: torch.Tensor) -> torch.Tensor:
        """The tensor to keep for ``x``: detached, in ``store_dtype``; one stored copy per source tensor."""
        if self.store_dtype is None or x.dtype == self.store_dtype or not x.is_floating_point():
            return x.detach() if x.requires_grad else x
        hit = self._stored.get(id(x))
        if hit is not None and hit[0] is x:
            self._stored.move_to_end(id(x))
            return hit[1]
        stored = x.detach().to(self.store_dtype)
        self._stored[id(x)] = (x, stored)
        if len(self._stored) > 16:  # a few recent sources: the same tensor often recurs (prompt, x_t)
            self._stored.popitem(last=False)
        return stored

    def keep_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The kept subset of ``tensors``, converted for storage.

        An attention point's tensor is often a view of a larger buffer (one branch of the batch, the
        text block of a joint softmax): it is copied, so the trace holds only what it shows.
        """
        kept = {}
        for name, x in tensors.items():
            if name not in self.kept:
                continue
            stored = self.store(x)
            if name.startswith("attn.") and stored.untyped_storage().nbytes() > stored.nbytes:
                stored = stored.clone()
            kept[name] = stored
        return kept

    def keep_maps(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A step's attention maps converted for storage (``store_dtype``, else float32)."""
        dtype = self.store_dtype or torch.float32
        return {key: x.detach().to(dtype) for key, x in maps.items()}

    @property
    def conventions(self) -> dict[str, Any] | None:
        """The family's conventions as the run recorded them (``diffexplain.conventions``): what
        ``step.model.*`` holds and the raw output's sign, the time the model was given, the pipeline's
        guidance formula, and this run's w on the classic scale and on the pipeline's own. None for a
        file written before conventions were recorded."""
        settings = self.run_settings
        return conventions_of_run(settings.model.get("conventions"), settings.guidance_scale)

    def raw_model_output(self, step: int, branch: str = "cond") -> torch.Tensor:
        """What the model itself returned at loop ``step`` for ``branch`` ("cond" or "uncond"), in the trace's
        layout: ``step.model.<branch>`` times the sign the family's convention recorded (Z-Image's transformer
        outputs −v; ``step.model.*`` holds v). The loop keeps one copy, so this costs nothing to record."""
        if branch not in ("cond", "uncond"):
            raise ValueError(f"branch={branch!r}: expected 'cond' or 'uncond'")
        prediction = self[f"step.model.{branch}", step]
        sign = (self.conventions or {}).get("model_output_sign", 1)
        return prediction if sign == 1 else prediction * sign

    @property
    def prompt_embeds(self) -> dict[str, torch.Tensor]:
        """The token embeddings of each branch ("cond", and "uncond" with guidance on), full precision."""
        return {branch: c["embeds"] for branch, c in self.conditioning.items()}

    def fingerprint(self) -> str | None:
        """The weight fingerprint of the model that made this trace, hashed on first request.

        Recorded in ``settings["model"]["fingerprint"]`` (so it is saved), with the way it was hashed
        (``"fingerprint_scheme"``, see ``diffexplain.fingerprint.SCHEME``); None when unknown: a file
        without one, or weights that changed after the run and before anyone asked.
        """
        model = self.run_settings.model
        if not model.get("fingerprint") and self.fingerprint_source is not None:
            value = self.fingerprint_source.get()
            if value is not None:
                model = {**model, "fingerprint": value, "fingerprint_scheme": SCHEME}
                self.run_settings = self.run_settings.replace(model=model)
        return self.run_settings.fingerprint

    @property
    def hook_names(self) -> tuple[str, ...]:
        """The hook-point names this trace was made with, in loop order."""
        return tuple(self._points)

    # ---- indexing --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.steps)

    def _check_name(self, name: str) -> str:
        """``name`` as this trace knows it (a deprecated name renamed, with a warning); else ``TraceKeyError``."""
        name = current_name(name)
        if name not in self._points:
            raise TraceKeyError(unknown_name_message("name", name, self._points))
        return name

    def _per_step(self, name: str) -> bool:
        return self._points[name].per_step

    def _index(self, step: int) -> int:
        n = len(self.steps)
        if not -n <= step < n:
            raise IndexError(f"step {step} out of range: this trace has {n} steps")
        return step % n

    def _not_kept(self, name: str, step: int | None = None) -> TraceKeyError:
        where = f" at step {step}" if step is not None else ""
        if self._points[name].cfg_only and not self.run_settings.do_cfg:
            w = self.run_settings.guidance_scale
            why = (
                "guidance was off (guidance_scale ≤ 1), so the unconditional branch was never computed"
                if w <= 1
                else f"guidance_scale={w:g}, but one branch: the model is guidance-distilled (w is an input of "
                "its one branch, as LCM's) and has no unconditional branch, or Qwen-Image without a "
                "negative prompt"
            )
        elif name == "decode.image" and not self.run_settings.decode:
            why = "the run was made with decode=False"
        elif name not in self.kept:
            why = (
                f"it was not kept (keep={sorted(self.kept)}); run with keep=None to keep everything, "
                f"or add {name!r} to keep="
            )
        else:
            why = "it was not recorded (an interrupted run, or a fork that changed guidance)"
        return TraceKeyError(f"{name!r}{where} is not in this trace: {why}")

    def __getitem__(self, key: str | tuple[str, int]) -> torch.Tensor:
        """``trace[name, step]``: one step's tensor; ``trace[name]``: a run-level tensor or a per-step stack."""
        if isinstance(key, tuple):
            name, step = key
            name = self._check_name(name)
            if not self._per_step(name):
                raise TraceKeyError(f"{name!r} is a run-level name with no steps; use trace[{name!r}]")
            record = self.steps[self._index(step)]
            if name not in record.tensors:
                raise self._not_kept(name, record.index)
            return record.tensors[name]
        key = self._check_name(key)
        if self._per_step(key):
            return self.stack(key)
        if key not in self.run_tensors:
            raise self._not_kept(key)
        return self.run_tensors[key]

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str):
            name = current_name(name)
        if name in self.run_tensors:
            return True
        return bool(self.steps) and all(name in s.tensors for s in self.steps)

    def stack(self, name: str) -> torch.Tensor:
        """A per-step tensor for every step, stacked: [S, ...] (e.g. [S, B, C, h, w])."""
        name = self._check_name(name)
        if not self._per_step(name):
            raise TraceKeyError(f"{name!r} is a run-level name; use trace[{name!r}]")
        if not self.steps:
            raise TraceKeyError(f"this trace has no finished steps to stack {name!r} over")
        return torch.stack([self[name, i] for i in range(len(self.steps))])

    @property
    def timesteps(self) -> list[float]:
        """The scheduler's timestep of each loop step."""
        return [s.timestep for s in self.steps]

    @property
    def noise_levels(self) -> list[NoiseLevel]:
        """ᾱ_t, σ_t and the x̂0 coefficients (a, b) of each loop step."""
        return [s.level for s in self.steps]

    def scalars(self, name: str) -> list[float | None]:
        """A declared per-step number (``diffexplain.step_scalars``, e.g. ``"scheduler_sigma"``) of each
        loop step; None at a step that has none. ``TraceKeyError`` for a name that is neither declared by
        the loop nor recorded at any step."""
        known = dict.fromkeys([*(s.name for s in STEP_SCALARS), *(k for s in self.steps for k in s.scalars)])
        if name not in known:
            raise TraceKeyError(unknown_name_message("step scalar", name, known))
        return [s.scalars.get(name) for s in self.steps]

    @property
    def image(self) -> torch.Tensor | None:
        """The decoded image [B, 3, H, W] in [-1, 1] (None if not decoded or not kept)."""
        return self.run_tensors.get("decode.image")

    @property
    def images(self) -> list[Image.Image]:
        """The decoded images as PIL images."""
        from PIL import Image

        if self.image is None:
            raise ValueError("this trace holds no decoded image (decode=False, or 'decode.image' not kept)")
        if self.image.dim() != 4:
            raise ValueError(
                f"this trace's output is not a picture but {tuple(self.image.shape)} numbers (a Kandinsky "
                "prior's image embeddings: trace.image); the decoder's trace holds the pictures"
            )
        pixels = (self.image.detach().float().cpu() / 2 + 0.5).clamp(0, 1)
        pixels = (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        if pixels.shape[-1] == 1:
            return [Image.fromarray(p[..., 0], mode="L") for p in pixels]
        return [Image.fromarray(p[..., :3]) for p in pixels]

    # ---- cross-attention maps (diffexplain.attention.maps) ------------------------------------------
    def attention(
        self,
        word_or_token: str | int | Token,
        *,
        steps: int | Iterable[int] | None = None,
        layers: LayerFilter = None,
        branch: str = "cond",
    ) -> torch.Tensor:
        """Where the image reads a word (all its tokens) or a token: [B, H, W], at the image size.

        Averaged over ``steps`` (None: all; an int, a range or a list) and ``layers`` (None: every
        layer; a resolution "16x16" or 16; a layer name or glob, which needs that layer's probabilities
        kept). ``branch="uncond"`` reads the negative prompt's tokens. Each pixel's maps sum to 1 over
        the tokens. ``ValueError`` lists the prompt's words for a word it does not have.
        """
        return reading.attention(self, word_or_token, steps=steps, layers=layers, branch=branch)

    def attention_maps(
        self,
        *,
        steps: int | Iterable[int] | None = None,
        layers: LayerFilter = None,
        branch: str = "cond",
    ) -> torch.Tensor:
        """Every token's map, [B, T, H, W] (``trace.tokens`` names the T), as ``attention`` averages them."""
        return reading.attention_maps(self, steps=steps, layers=layers, branch=branch)

    @property
    def tokens(self) -> list[Token]:
        """The prompt's tokens, one per text position (special and padding tokens too), with their words.

        For a batch, the first prompt's; ``token_lists()`` has each prompt's (and the negative prompts').
        """
        return reading.token_lists(self, "cond")[0]

    def token_lists(self, branch: str = "cond") -> list[list[Token]]:
        """Each prompt's tokens (``branch="uncond"``: each negative prompt's)."""
        return reading.token_lists(self, branch)

    @property
    def attention_resolutions(self) -> dict[str, list[str]]:
        """Resolution ("16x16") → the attention layers its maps average over."""
        return reading.resolutions(self)

    # ---- guidance without the model ----------------------------------------------------------------
    def reguide(self, step: int, guidance_scale: float, *, guider: Guider | None = None) -> Reguided:
        """ε̂ and x̂0 of ``step`` at another guidance scale, from the cached ε_c and ε_u (no model call).

        ``guidance_scale`` is w, a finite number ≥ 0, as in ``Explainer.run``; ``guider`` another guidance
        method (``diffexplain.guiders``; None: ε_u + w·Δ). A stateful guider (APG) is exact for that step
        (``diffexplain.reguide.reguide``).
        """
        return reguide(self, step, guidance_scale, guider)

    # ---- memory and devices ------------------------------------------------------------------------
    def memory_bytes(self, include_restart: bool = True) -> int:
        """Bytes held by this trace's tensors, each storage counted once (scheduler tables not counted)."""
        return unique_bytes(all_tensors(self, include_restart))

    def memory_per_step(self) -> float:
        """Mean bytes per loop step of the per-step tensors and restart state."""
        return memory_per_step(self)

    def to(self, device: torch.device | str) -> Trace:
        """A copy with every tensor on ``device`` (the scheduler snapshots and generator states stay put)."""
        return moved(self, device)

    # ---- files -----------------------------------------------------------------------------------
    def save(self, path: str | Path, *, previews: bool | None = None) -> None:
        """Write the trace to ``path``: safetensors for the tensors, JSON metadata for the rest.

        ``previews``: small decoded pictures of x_t and x̂0 per step (PNG, at most 256 px), so the file
        shows real pictures without the model (TracePlayer, ``to_html``). None (default): stored when
        they can be made (the trace's explainer is known, or the model works in pixel space) or when the
        trace already holds them (a loaded file), unless decoding them would take more than a minute (a
        big VAE on a CPU: then a warning says so); True: required, whatever it costs (``ValueError`` if
        the model is not known); False: left out. They are made once per trace and reused by later saves.
        """
        if previews not in (None, True, False):
            raise ValueError(f"previews={previews!r}: expected True, False or None")
        save_trace(
            self, path, self.ensure_previews(required=bool(previews)) if previews is not False else None
        )

    def ensure_previews(self, *, required: bool = False) -> Previews | None:
        """This trace's previews, made now (once) if the model is known, else None; ``required``: made
        whatever it costs, ``ValueError`` when the model is not known (``previews.ensure_previews``)."""
        from diffexplain.previews import ensure_previews

        return ensure_previews(self, required=required)

    def to_html(self, path: str | Path, *, compare: Trace | None = None, title: str | None = None) -> Path:
        """Write one self-contained HTML page of this trace: open it in any browser, no Python, no server.

        It has a step slider, a play button, the StepExplorer's panels (x_t, x̂0, ε_c, ε_u, Δ, ε̂) and its
        timeline. ``compare``: the same prompt and seed with guidance off (or any other trace of the same
        prompt), shown beside this one. Pictures of x_t and x̂0 are the stored previews (made now when
        the model is known), else the fast latent preview. Returns the path written.
        """
        from diffexplain.html_page import write_page

        return write_page(self, path, compare=compare, title=title)

    @classmethod
    def load(cls, path: str | Path, *, explainer: Explainer | None = None) -> Trace:
        """Read a trace written by ``save``; pass ``explainer`` to fork it. Raises ``TraceFileError``."""
        trace = load_trace(path, cls)
        trace.explainer = explainer
        return trace

    def __repr__(self) -> str:
        s = self.run_settings
        status = self.status if self.message is None else f"{self.status}: {self.message}"
        fork = f", forked_from={self.forked_from}" if self.forked_from is not None else ""
        return (
            f"Trace(prompt={s.prompt!r}, steps={len(self)}, scheduler={s.scheduler.get('class')}, "
            f"guidance_scale={s.guidance_scale}, seed={s.seed}{fork}, "
            f"kept={len(self.kept)} names, {human_bytes(self.memory_bytes())}, {status})"
        )
