"""Cascade: N named stages run one after the other, each an ``Explainer`` over a family, each its own loop.

DeepFloyd IF is two stages: ``I`` (``IF``: 64 × 64 pixels from T5 states) and ``II``
(``IFSuperResolution``: 256 × 256, conditioned on stage I's picture). Stage k + 1 receives stage k's
output (its final x_0, decoded where it has a VAE), and its family turns that into its conditioning
(``family.stage_inputs``: IF II upscales and noises it). Every stage is an ordinary run of the ordinary
loop: same hook points, same trace, same fork.

Hook points are named with the stage's name in front: ``"II.step.latents"``, ``"I.step.guidance"``.
Why a prefix rather than a ``stage=`` filter beside ``steps=``: a ``hooks={name: fn}`` dict can then
hold hooks for two stages at the same point, ``cascade.hook_points()`` is one flat list, and a cascade
trace reads ``trace["II.step.pred_x0", 3]`` as a trace does. A ``Hook`` with a step filter goes to a
stage as a ``(stage, Hook)`` pair. What passes between stages is a hook point too: ``"II.input"``, the
previous stage's picture as stage II receives it ([B, 3, h, w] in [-1, 1]), run-level.

Kandinsky 2.2 (``families.kandinsky``) is a cascade too: ``prior`` then ``decoder``. There what passes is
no picture but the prior's image embeddings, ``"decoder.input"`` = [image_embeds, negative_image_embeds]
[2, B, D] (the prior family's ``hand_over``); the decoder checks its previous stage (``check_previous``).

``cascade.run_stage("II", prompt, image=picture)`` runs one later stage on its own, on an input of one's
own given as its pipeline takes it (``diffexplain.cascade_stage``): an upscale of any picture, a Kandinsky
image variation or interpolation (``image_embeds=``, ``negative_image_embeds=``).

Seeds: each stage draws from its own generator seeded with the cascade's seed, as
``IFPipeline(..., generator=torch.Generator().manual_seed(s))`` then
``IFSuperResolutionPipeline(..., generator=torch.Generator().manual_seed(s))``: the final picture
equals the two pipelines' bit for bit. A fork inside stage I re-runs stage II from scratch on the new
picture (same seed and settings); a fork inside stage II keeps stage I.
"""

from __future__ import annotations

import secrets
from collections.abc import Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from diffexplain import checks
from diffexplain.cascade_hooks import INPUT_POINT, StageHooks, apply_input_hooks, split_hooks
from diffexplain.cascade_stage import start_on_input, start_stage
from diffexplain.cascade_trace import CascadeTrace
from diffexplain.explainer import Explainer
from diffexplain.hooks import Hook
from diffexplain.jobs import Job, draining
from diffexplain.names import HookPoint
from diffexplain.trace import Trace

if TYPE_CHECKING:
    from PIL import Image


def stage_output(explainer: Explainer, trace: Trace) -> torch.Tensor:
    """What a stage hands on: its final x_0 as a picture [B, 3, H, W] in [-1, 1] (decoded if latent), or
    what its family's ``hand_over`` makes of it (Kandinsky's prior: the image embeddings [2, B, D])."""
    if trace.final_latents is None:
        raise ValueError(
            f"this stage's trace is {trace.status} ({trace.message}): it has no output to pass on"
        )
    family = explainer.family
    latents = trace.final_latents.to(explainer.device)
    with torch.no_grad():
        if hasattr(family, "hand_over"):
            return family.hand_over(latents, trace.settings)
        return family.decode(latents)


class Cascade:
    """Named stages, run in order; stage k + 1 is conditioned on stage k's output.

    ``Cascade({"I": Explainer.from_pipeline(if_stage_1), "II": Explainer.from_pipeline(if_stage_2)})``,
    or ``Cascade.from_pipelines(stage_1, stage_2)``, or ``Cascade.from_pretrained(stage1_id, stage2_id)``.
    """

    def __init__(self, stages: Mapping[str, Explainer], *, progress: bool = True) -> None:
        if not isinstance(stages, Mapping) or not stages:
            raise TypeError(f"stages must be a dict of stage name -> Explainer; got {stages!r}")
        for name, explainer in stages.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"stage name {name!r}: expected an identifier such as 'I' or 'II' (no dots)")
            if not isinstance(explainer, Explainer):
                raise TypeError(f"stage {name!r}: expected an Explainer, got {type(explainer).__name__}")
        self.stages: dict[str, Explainer] = dict(stages)
        self.names: tuple[str, ...] = tuple(self.stages)
        for before, after in zip(self.names, self.names[1:], strict=False):
            family, previous = self.stages[after].family, self.stages[before].family
            if not hasattr(family, "stage_inputs"):
                raise TypeError(
                    f"stage {after!r} ({family.label}) takes no previous stage's output; a later stage needs "
                    "a family conditioned on one (e.g. IFSuperResolution, IFSuperResolutionPipeline's parts)"
                )
            if hasattr(family, "check_previous"):  # a stage that reads no picture (Kandinsky's decoder)
                family.check_previous(previous)
                continue
            if hasattr(previous, "hand_over"):
                raise TypeError(
                    f"stage {before!r} ({previous.label}) hands on image embeddings, not pictures; stage "
                    f"{after!r} ({family.label}) needs a picture"
                )
            made = int(previous.model.config.in_channels)
            made = made // 2 if hasattr(previous, "stage_inputs") else made
            if previous.vae is None and made != family.image_channels():
                raise ValueError(
                    f"stage {before!r} makes pictures of {made} channels but stage {after!r} expects "
                    f"{family.image_channels()} (its unet.config.in_channels / 2)"
                )
        self.progress = progress

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def from_pipelines(cls, *pipelines: Any, names: Iterable[str] = ("I", "II"), **kwargs: Any) -> Cascade:
        """A cascade sharing the pipelines' parts: IF's ``IFPipeline`` then ``IFSuperResolutionPipeline``."""
        names = tuple(names)
        if len(names) != len(pipelines):
            raise ValueError(f"{len(pipelines)} pipelines but {len(names)} names ({', '.join(names)})")
        return cls(
            {n: Explainer.from_pipeline(p, progress=False) for n, p in zip(names, pipelines, strict=True)},
            **kwargs,
        )

    @classmethod
    def from_pretrained(
        cls,
        stage1: str = "DeepFloyd/IF-I-XL-v1.0",
        stage2: str = "DeepFloyd/IF-II-L-v1.0",
        **kwargs: Any,
    ) -> Cascade:
        """DeepFloyd IF's stages I and II from folders or Hub ids (gated: accept the licence on the Hub,
        then log in). Stage II shares stage I's T5. ``kwargs`` go to both ``from_pretrained`` calls
        (e.g. ``variant="fp16", torch_dtype=torch.float16``). No safety checker or watermarker is loaded:
        diffexplain looks inside the model; the DeepFloyd IF licence's terms still apply to its use."""
        from diffusers import IFPipeline, IFSuperResolutionPipeline

        from diffexplain.models.hub import locate_pipeline

        offline = False
        for path, expected in ((stage1, "IFPipeline"), (stage2, "IFSuperResolutionPipeline")):
            source = locate_pipeline(path, **kwargs)  # a missing folder or an unreachable hub: said at once
            offline = offline or source.local_files_only
            config = source.config
            if config.get("_class_name") != expected:
                example = "DeepFloyd/IF-I-XL-v1.0" if expected == "IFPipeline" else "DeepFloyd/IF-II-L-v1.0"
                raise ValueError(
                    f"{path}: a {config.get('_class_name') or 'pipeline of unknown class'}; expected a "
                    f"{expected} (DeepFloyd IF, e.g. {example})"
                )
        none = dict(
            safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False
        )
        if offline:  # the hub is out of reach (or HF_HUB_OFFLINE): load both from the cache
            kwargs["local_files_only"] = True
        one = IFPipeline.from_pretrained(stage1, **none, **kwargs)
        two = IFSuperResolutionPipeline.from_pretrained(
            stage2, text_encoder=one.text_encoder, tokenizer=one.tokenizer, **none, **kwargs
        )
        return cls.from_pipelines(one, two)

    def to(self, *args: Any, **kwargs: Any) -> Cascade:
        """Move every stage's parts (``Explainer.to``); returns self."""
        for explainer in self.stages.values():
            explainer.to(*args, **kwargs)
        return self

    def hook_points(self) -> tuple[HookPoint, ...]:
        """Every stage's hook points, named ``<stage>.<point>``, with ``<stage>.input`` for later stages."""
        points: list[HookPoint] = []
        for k, name in enumerate(self.names):
            if k:
                tensor, shape = getattr(
                    self.stages[name].family, "stage_input_point", ("output picture", "[B, 3, h, w]")
                )
                points.append(
                    HookPoint(
                        f"{name}.{INPUT_POINT}",
                        f"stage {self.names[k - 1]}'s {tensor}, as stage {name} receives it",
                        shape,
                        False,
                    )
                )
            for p in self.stages[name].hook_points():
                points.append(
                    HookPoint(f"{name}.{p.name}", p.tensor, p.shape, p.per_step, p.cfg_only, p.heavy)
                )
        return tuple(points)

    def point_names(self) -> dict[str, tuple[str, ...]]:
        """Each stage's own hook-point names (``step.latents``, without the stage), by stage in run order."""
        return {name: tuple(p.name for p in e.hook_points()) for name, e in self.stages.items()}

    # ---- running -----------------------------------------------------------------------------------
    def run_steps(
        self,
        prompt: str | list[str],
        *,
        negative_prompt: str | list[str] = "",
        seed: int | None = None,
        hooks: StageHooks = None,
        progress: bool | None = None,
        **stage_settings: dict[str, Any],
    ) -> Generator[int, None, CascadeTrace]:
        """``run`` as a generator that yields after each loop step of each stage and returns the
        ``CascadeTrace`` (a widget's work; closing it stops the running stage). Checked on creation."""
        checks.check_prompt(prompt)
        first = self.stages[self.names[0]].family
        if hasattr(first, "stage_inputs"):
            raise TypeError(
                f"stage {self.names[0]!r} ({first.label}) is conditioned on a previous stage's output and "
                f"no stage runs before it: use cascade.run_stage({self.names[0]!r}, prompt, ...) with its input"
            )
        seed = secrets.randbits(63) if seed is None else checks.check_seed(seed)
        settings = self._stage_settings(stage_settings)
        loop_hooks, input_hooks = split_hooks(hooks, self.point_names())
        progress = self.progress if progress is None else progress
        for name in self.names[1:]:  # a later stage's settings are checked now, not after stage I ran
            self.stages[name].check_run(prompt, negative_prompt=negative_prompt, seed=seed, **settings[name])
        cascade = CascadeTrace(
            {"stages": list(self.names), "prompt": prompt, "negative_prompt": negative_prompt, "seed": seed}
        )
        cascade.cascade = self
        return self._stages(
            cascade, 0, None, prompt, negative_prompt, seed, settings, loop_hooks, input_hooks, progress
        )

    run = torch.no_grad()(
        draining(
            run_steps,
            """Run every stage in order and return the trace of each (``CascadeTrace``).

            ``stage_settings``: one dict per stage, by its name, of that stage's ``Explainer.run`` settings,
            e.g. ``I=dict(num_inference_steps=50), II=dict(num_inference_steps=25, noise_level=100)``.
            Each stage's generator is seeded with ``seed`` (drawn and recorded when None).
            ``run(...)`` drains ``run_steps(...)``.
            """,
            "CascadeTrace",
        )
    )

    @torch.no_grad()
    def run_stage(
        self,
        stage: str,
        prompt: str | list[str],
        *,
        image: torch.Tensor | Image.Image | list[Image.Image] | None = None,
        image_embeds: torch.Tensor | list[torch.Tensor] | None = None,
        negative_image_embeds: torch.Tensor | list[torch.Tensor] | None = None,
        negative_prompt: str | list[str] = "",
        seed: int | None = None,
        hooks: StageHooks = None,
        progress: bool | None = None,
        **settings: Any,
    ) -> Trace:
        """Run one stage on its own, on an input of one's own; returns that stage's ``Trace``.

        The input is what the stage's diffusers pipeline takes: IF stage II (``IFSuperResolutionPipeline``)
        ``image=``, a [B, 3, h, w] tensor in [-1, 1] or a PIL image; Kandinsky's decoder
        (``KandinskyV22Pipeline``) ``image_embeds=`` and ``negative_image_embeds=``, [B, D] each (image
        variations, interpolated embeddings). A stage that takes none (the first) runs from the prompt.
        ``settings`` are the stage's ``Explainer.run`` settings (``num_inference_steps``, ``noise_level``...);
        ``hooks`` are named as in ``run`` (``"II.step.latents"``), for this stage only. The stage draws
        from a generator seeded with ``seed``, as in ``run``: on stage I's output picture (``trace["II.input"]``)
        stage II equals the stage II of ``run`` bit for bit.
        """
        return start_stage(
            self, stage, prompt, image=image, image_embeds=image_embeds,
            negative_image_embeds=negative_image_embeds, negative_prompt=negative_prompt, seed=seed,
            hooks=hooks, progress=progress, settings=settings,
        ).finish()  # fmt: skip

    def _stage_settings(self, given: dict[str, Any]) -> dict[str, dict[str, Any]]:
        unknown = sorted(set(given) - set(self.names))
        if unknown:
            raise TypeError(
                f"unknown run setting(s) {', '.join(unknown)}: a cascade takes prompt, negative_prompt, seed, "
                f"hooks, progress and one dict per stage ({', '.join(f'{n}=dict(...)' for n in self.names)})"
            )
        for name, value in given.items():
            if not isinstance(value, Mapping):
                raise TypeError(f"{name}= must be a dict of that stage's run settings; got {value!r}")
            for key in ("prompt", "seed", "generator", "hooks", "latents", "negative_prompt"):
                if key in value:
                    raise TypeError(f"{name}={{{key!r}: ...}}: {key} is the cascade's, not one stage's")
        return {n: dict(given.get(n, {})) for n in self.names}

    @torch.no_grad()
    def _stages(
        self,
        cascade: CascadeTrace,
        first: int,
        first_trace: Trace | None,
        prompt: str | list[str],
        negative_prompt: str | list[str],
        seed: int,
        settings: dict[str, dict[str, Any]],
        loop_hooks: dict[str, list[Hook]],
        input_hooks: dict[str, list[Any]],
        progress: bool,
    ) -> Generator[int, None, CascadeTrace]:
        """Stages ``first``.. in order (``first_trace``: stage ``first``'s trace, already made by a fork)."""
        for k in range(first, len(self.names)):
            name, explainer = self.names[k], self.stages[self.names[k]]
            common = dict(negative_prompt=negative_prompt, hooks=loop_hooks[name], progress=progress)
            if k == first and first_trace is not None:
                trace = first_trace
            elif k == 0:
                trace = yield from explainer.start_run(prompt, seed=seed, **common, **settings[name])
            else:
                previous_name = self.names[k - 1]
                previous = cascade.stages[previous_name]
                image = stage_output(self.stages[previous_name], previous)
                image = apply_input_hooks(name, image, input_hooks[name], previous, cascade.replacements)
                cascade.inputs[name] = image
                trace = yield from start_on_input(explainer, image, prompt, seed, common, settings[name])
            cascade.stages[name] = trace
            if trace.status != "complete":
                raise RuntimeError(f"stage {name} did not finish ({trace.status}: {trace.message})")
        return cascade

    # ---- forks -------------------------------------------------------------------------------------
    def fork_steps(
        self,
        trace: CascadeTrace,
        stage: str,
        step: int,
        *,
        hooks: StageHooks = None,
        progress: bool | None = None,
        **changes: Any,
    ) -> Generator[int, None, CascadeTrace]:
        """``fork`` as a generator (see ``run_steps``); checked on creation."""
        if not isinstance(trace, CascadeTrace):
            raise TypeError(f"trace must be a CascadeTrace (cascade.run's); got {type(trace).__name__}")
        if stage not in self.stages:
            raise ValueError(f"stage={stage!r}: expected one of {', '.join(self.names)}")
        if tuple(trace.stages) != self.names:
            raise ValueError(
                f"this trace has the stages {', '.join(trace.stages)}; this cascade {', '.join(self.names)}"
            )
        loop_hooks, input_hooks = split_hooks(hooks, self.point_names())
        progress = self.progress if progress is None else progress
        job = self.stages[stage].start_fork(
            trace.stages[stage], step, hooks=loop_hooks[stage], progress=progress, **changes
        )
        return self._fork(trace, stage, job, changes, loop_hooks, input_hooks, progress)

    fork = torch.no_grad()(
        draining(
            fork_steps,
            """Re-run ``stage`` from ``step`` (``Explainer.fork``'s ``changes``: prompt, guidance_scale, latents...).

            Earlier stages are kept; later ones run again from scratch on the new output, with their recorded
            settings and seed (and the ``hooks`` named for them). With no change: bit for bit the original.
            ``fork(...)`` drains ``fork_steps(...)``.
            """,
            "CascadeTrace",
        )
    )

    @torch.no_grad()
    def _fork(
        self,
        trace: CascadeTrace,
        stage: str,
        job: Job,
        changes: dict[str, Any],
        loop_hooks: dict[str, list[Hook]],
        input_hooks: dict[str, list[Any]],
        progress: bool,
    ) -> Generator[int, None, CascadeTrace]:
        k = self.names.index(stage)
        forked_stage = yield from job
        settings = {**trace.settings, "forked": {"stage": stage, "step": forked_stage.forked_from}}
        forked = CascadeTrace(settings)
        forked.cascade = self
        for name in self.names[:k]:
            forked.stages[name] = trace.stages[name]
        forked.inputs = {n: x for n, x in trace.inputs.items() if self.names.index(n) <= k}
        forked.replacements = [r for r in trace.replacements if self.names.index(r.name.split(".")[0]) <= k]
        later = {n: self._recorded_settings(trace.stages[n]) for n in self.names[k + 1 :]}
        prompt = changes.get("prompt") or trace.settings["prompt"]
        negative = changes.get("negative_prompt")
        negative = trace.settings.get("negative_prompt", "") if negative is None else negative
        return (
            yield from self._stages(
                forked, k, forked_stage, prompt, negative, int(trace.settings["seed"]),
                {**{n: {} for n in self.names}, **later}, loop_hooks, input_hooks, progress,
            )
        )  # fmt: skip

    @staticmethod
    def _recorded_settings(trace: Trace) -> dict[str, Any]:
        """A stage's run settings as its trace recorded them (to run it again on a new input)."""
        s = trace.run_settings
        return {
            "num_inference_steps": s.num_inference_steps,
            "guidance_scale": s.guidance_scale,
            "height": s.height,
            "width": s.width,
            "eta": s.eta,
            "decode": s.decode,
            **s.options,
            "attention_maps": s.attention_maps,
            "keep": sorted(trace.kept),
            "store_dtype": trace.store_dtype,
        }

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={e.family.label}" for n, e in self.stages.items())
        return f"Cascade({inner})"
