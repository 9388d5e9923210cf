"""View helpers shared by the widgets, the HTML page and the previews: labels, scales, small pictures.

Nothing here imports ipywidgets or plotly, so that ``trace.save()`` and ``trace.to_html()`` load no
widget code (``diffexplain.widgets`` builds its controls on these).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from diffexplain import render
from diffexplain.errors import TraceKeyError
from diffexplain.families import FAMILIES

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace

DEFAULT_SIZE = 160  # displayed picture width in pixels


def png(image: Image.Image) -> bytes:
    """PNG bytes of a PIL image (what ``ipywidgets.Image`` shows)."""
    return render.png_bytes(image)


def blank(size: int = DEFAULT_SIZE, text: str = "") -> bytes:
    """A light grey placeholder picture with an optional short text (Greek letters and x̂ too: ``render.font``)."""
    from PIL import ImageDraw

    img = Image.new("RGB", (size, size), (235, 235, 235))
    if text:
        draw = ImageDraw.Draw(img)
        for i, line in enumerate(text.split("\n")):
            draw.text((6, 6 + 14 * i), line, fill=(90, 90, 90), font=render.font(11))
    return png(img)


def rms(t: torch.Tensor) -> float:
    """Root mean square of a tensor (‖x‖ / √numel): comparable across model sizes."""
    return float(t.detach().float().pow(2).mean().sqrt())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two tensors, flattened."""
    a, b = a.detach().float().flatten(), b.detach().float().flatten()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def default_steps(explainer: Explainer, fallback: int | None = None) -> int:
    """The model's default number of steps (``explainer.defaults``), else ``fallback``, else its family's."""
    fallback = explainer.family.default_steps if fallback is None else fallback
    return int(getattr(explainer, "defaults", {}).get("num_inference_steps", fallback))


def default_guidance(explainer: Explainer, fallback: float | None = None) -> float:
    """The model's default guidance scale (``explainer.defaults``), else ``fallback``, else its family's."""
    fallback = explainer.family.default_guidance_scale if fallback is None else fallback
    return float(getattr(explainer, "defaults", {}).get("guidance_scale", fallback))


TEXT_ENCODER_NAMES = {
    "CLIPTextModel": "CLIP",
    "CLIPTextModelWithProjection": "CLIP",
    "T5EncoderModel": "T5",
    "UMT5EncoderModel": "UMT5",
    "BertModel": "MiniLM",
    "Qwen3Model": "Qwen3 (an LLM)",
    "Qwen3ForCausalLM": "Qwen3 (an LLM)",
    "Qwen2_5_VLForConditionalGeneration": "Qwen2.5-VL (an LLM)",
    "Qwen3VLForConditionalGeneration": "Qwen3-VL (an LLM)",
    "Gemma2Model": "Gemma-2 (an LLM)",
    "Gemma2ForCausalLM": "Gemma-2 (an LLM)",
    "Mistral3ForConditionalGeneration": "Mistral Small 3 (an LLM)",
}
"""The text encoder's class → what to call it in labels."""


def text_reader(trace: Trace | None, explainer: Explainer | None = None) -> str:
    """Who reads the prompt, in words: "CLIP and T5", "Qwen3 (an LLM)"; "" where unknown (a trace without a
    model record). The encoders' class names come from the family's record (``Family.describe``)."""
    if explainer is not None:
        classes = explainer.family.describe().get("text_encoders", [])
    elif trace is not None:
        classes = trace.run_settings.model.get("text_encoders", [])
    else:
        classes = []
    names = list(dict.fromkeys(TEXT_ENCODER_NAMES.get(c, c) for c in classes))
    return " and ".join(names)


def words(trace: Trace | None, explainer: Explainer | None = None) -> dict[str, str]:
    """How to name the model, its output and x_t in labels: ``{"model": "U-Net", "output": "noise",
    "xt": "latents"}`` for Stable Diffusion, ``{"model": "transformer", "output": "velocity", ...}`` for a
    flow model (SD3), "pixels" for a pixel model (IF), "image embeddings" for Kandinsky's prior."""
    family = explainer.family if explainer is not None else None
    if family is None and trace is not None:
        family = FAMILIES.get(trace.run_settings.family)
    if family is None:
        return {"model": "U-Net", "output": "noise", "xt": "latents"}
    if family.output_kind == "image embedding":
        xt = "image embeddings"
    elif (explainer is not None and explainer.vae is None) or (
        explainer is None and trace is not None and is_pixel_space(trace)
    ):
        xt = "pixels"
    else:
        xt = "latents"
    prediction = (trace.run_settings.prediction_type if trace is not None else None) or (
        getattr(getattr(explainer, "scheduler", None), "config", {}).get("prediction_type")
    )
    return {
        "model": "U-Net" if family.model_attr == "unet" else family.model_attr,
        "output": "velocity v"
        if prediction == "v_prediction"  # SD 2, the cascade's II
        else "velocity"
        if prediction == "flow_prediction"  # the embedded flow model
        else family.output_kind,
        "xt": xt,
    }


def is_pixel_space(trace: Trace, explainer: Explainer | None = None) -> bool:
    """True when the trace's model has no VAE (the U-Net denoises pixels)."""
    if explainer is not None:
        return explainer.vae is None
    return trace.run_settings.model.get("vae") is None


def is_sigma_space(scheduler_class: str) -> bool:
    """Whether a scheduler holds x_t = x0 + σ·ε (Euler, Heun, LMS, KDPM2) rather than √ᾱ·x0 + √(1−ᾱ)·ε."""
    if "FlowMatch" in scheduler_class:  # x_t = (1 − σ)·x0 + σ·ε: already about unit variance
        return False
    return any(key in scheduler_class for key in ("Euler", "Heun", "LMS", "KDPM2"))


def vp_scale(trace: Trace, step: int) -> float:
    """Factor that shows x_t at unit variance: 1/√(1+σ²) for σ-space schedulers (Euler, Heun ...), else 1."""
    name = trace.run_settings.scheduler.get("class", "")
    return 1.0 / math.sqrt(1.0 + trace.steps[step].level.sigma ** 2) if is_sigma_space(name) else 1.0


def difference_image(a: np.ndarray, b: np.ndarray) -> Image.Image:
    """|a − b| of two HxWx3 arrays (0..255), summed over colours: white = equal, black = the largest change."""
    diff = np.abs(a - b).sum(axis=-1)
    scale = max(float(diff.max()), 1e-6)
    return Image.fromarray((255 - diff / scale * 255).round().astype(np.uint8)).convert("RGB")


def shown_latents(trace: Trace, step: int) -> torch.Tensor | None:
    """x_t entering ``step`` (first item, [1, C, h, w]) scaled as the StepExplorer shows it (``vp_scale``):
    the kept ``step.latents``, else the restart point's; None when neither is there."""
    record = trace.steps[step]
    latents = record.tensors.get("step.latents")
    if latents is None and record.restart is not None:
        latents = record.restart.latents
    return None if latents is None else latents[:1].float() * vp_scale(trace, step)


def effective_scales(trace: Trace) -> list[float | None]:
    """Per step, the w that plain CFG would need along Δ: ⟨ε̂ − ε_u, Δ⟩ / ‖Δ‖², Δ = ε_c − ε_u (the run's
    own w under CFG; less where a method shrinks or turns guidance, 1 outside an interval, 0 where ε̂ = ε_u).
    None where a step has no ε_u (guidance off)."""
    out: list[float | None] = []
    for i in range(len(trace)):
        try:
            cond, uncond = trace["step.model.cond", i], trace["step.model.uncond", i]
            guided = trace["step.guidance", i]
        except TraceKeyError:
            out.append(None)
            continue
        delta = (cond - uncond).double()
        squared = float(delta.pow(2).sum())
        out.append(None if squared == 0 else float(((guided - uncond).double() * delta).sum()) / squared)
    return out
