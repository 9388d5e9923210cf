"""NoiseLab's work, shared by the anywidget view (``noise_lab.NoiseLab``) and the ipywidgets one it replaced
(``classic_noise_lab.ClassicNoiseLab``): the starting noise, the run, the rectangle and the fork that adds
noise at step k. A mixin: the view supplies the controls it reads (``source``, ``prompt``, ``seed``,
``steps``, ``step``, ``strength``, ``noise_seed``, ``use_rect``, ``rows``, ``cols``, ``upload``,
``dataset_index``, ``branch_title``), ``guidance_scale``, ``custom_noise``, ``original``/``branch`` and
``_redraw``; ``Actions`` gives ``finish``, ``say``, ``guard``, ``run_steps`` and ``fork_steps``."""

from __future__ import annotations

from typing import Any

import torch

from diffexplain import interventions
from diffexplain.hooks import Hook
from diffexplain.probe import image_size, image_tensor
from diffexplain.widgets.actions import Work


def first_upload(upload: Any) -> bytes | None:
    """The content of the first file in a ``FileUpload`` (ipywidgets 8 value format), or None."""
    value = upload.value
    if not value:
        return None
    item: Any = value[0] if isinstance(value, list | tuple) else next(iter(value.values()))
    content = item["content"] if isinstance(item, dict) else item.content
    return bytes(content)


class NoiseWork:
    """The runs and forks of a NoiseLab (module docstring)."""

    explainer: Any

    # ---- the starting noise ----------------------------------------------------------------------
    def set_initial_noise(self, noise: torch.Tensor, *, run: bool = True) -> None:
        """Start from your own tensor ([C, h, w] or [1, C, h, w], unit scale, like ``torch.randn``) and run."""
        if noise.dim() not in (3, 4):
            raise ValueError(
                f"initial noise must be [C, h, w] or [1, C, h, w], got shape {tuple(noise.shape)}"
            )
        self.custom_noise = noise.detach().float().cpu()
        self.source.value = "my tensor"
        if run:
            self.guard(self.run)()

    def _start_hooks(self) -> list[Hook]:
        source = self.source.value
        if source == "seed":
            return []
        if source in interventions.PATTERNS:
            return [interventions.noise_pattern(source)]
        if source == "my tensor":
            if self.custom_noise is None:
                raise ValueError(
                    "the source is 'my tensor' but no tensor is set: call this NoiseLab's "
                    "set_initial_noise(torch.randn(C, h, w)), or pick another source"
                )
            return [interventions.replace_initial_noise(self.custom_noise)]
        content = first_upload(self.upload)
        if content is not None:
            image = image_tensor(content, image_size(self.explainer))[0]
        else:
            from diffexplain.data import ShapesDataset

            height = image_size(self.explainer)[0]
            example = ShapesDataset(size=height)[self.dataset_index.value]
            image = torch.from_numpy(example.pixels).float()
        return [interventions.initial_noise_from_image(self.explainer, image)]

    # ---- actions ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Run the loop from the chosen starting noise (replaces the original; clears the branch)."""
        self.finish(self._run_work())

    def _run_work(self) -> Work:
        self.say(f"running from: {self.source.value} …")
        self.original = yield from self.run_steps(
            self.explainer,
            self.prompt.value,
            seed=self.seed.seed,
            guidance_scale=self.guidance_scale,
            num_inference_steps=self.steps.value,
            hooks=self._start_hooks(),
        )
        self.branch = None
        self.step.max = len(self.original) - 1
        self.step.value = min(self.step.value, self.step.max) or len(self.original) // 2
        self.say(f"ran {len(self.original)} steps from: {self.source.value}")
        self._redraw()

    def mask(self) -> tuple[float, float, float, float] | None:
        """The rectangle as (top, bottom, left, right) fractions, or None when it is not used."""
        if not self.use_rect.value:
            return None
        (top, bottom), (left, right) = self.rows.value, self.cols.value
        return top / 100, bottom / 100, left / 100, right / 100

    def inject(self) -> None:
        """Add noise at step k (``interventions.add_noise``) and fork the original from k."""
        self.finish(self._inject_work())

    def _inject_work(self) -> Work:
        if self.original is None:
            raise RuntimeError("run first: there is no trace to fork")
        k = self.step.value
        hook = interventions.add_noise(k, self.strength.value, seed=self.noise_seed.seed, mask=self.mask())
        where = "inside the rectangle" if self.use_rect.value else "everywhere"
        self.say(f"forking at step {k}: adding noise of strength {self.strength.value:g} {where} …")
        self.branch = yield from self.fork_steps(self.explainer, self.original, k, hooks=[hook])
        self.branch_title.value = f"<b>new branch (noise at step {k})</b>"
        copied = (
            "nothing is copied" if k == 0 else "step 0 is copied" if k == 1 else f"steps 0–{k - 1} are copied"
        )
        self.say(f"forked at step {k}: {copied}, steps {k}–{len(self.branch) - 1} ran again")
        self._redraw()
