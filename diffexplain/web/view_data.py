"""The data of a trace's step view, as the shared module ``trace_view.js`` reads it (JSON-ready).

One builder for the HTML page (``diffexplain.html_page`` adds its pictures as data URIs, the final
picture and the guidance pair) and the anywidget views (``diffexplain.widgets.trace_view`` sends the
pictures once as one binary buffer). The texts are the StepExplorer's (``diffexplain.explanations``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from diffexplain.errors import TraceKeyError
from diffexplain.explanations import (
    GUIDANCE_OFF,
    STEP_HELP,
    STEP_PANELS,
    TIMELINE_AXES,
    TIMELINE_SERIES,
    TIMELINE_TITLE,
)
from diffexplain.families import FAMILIES
from diffexplain.views import DEFAULT_SIZE, cosine, rms, text_reader, words

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace


def get(trace: Trace, name: str, step: int) -> torch.Tensor | None:
    """``trace[name, step]``, or None where it was not kept (or not computed: ε_u with guidance off)."""
    try:
        return trace[name, step]
    except TraceKeyError:
        return None


def _round(value: float | None, digits: int = 5) -> float | None:
    return None if value is None else round(float(value), digits)


def has_cfg(trace: Trace) -> bool:
    """Guidance on as the run decided it, with ε_u kept (the ε_u and Δ panels have something to show)."""
    return bool(trace.settings.get("do_cfg", True)) and get(trace, "step.model.uncond", 0) is not None


def series(trace: Trace, cfg: bool = True) -> dict[str, list[float | None]]:
    """The timeline's series per step: ‖ε_c‖, ‖ε_u‖, ‖Δ‖ (RMS), cos(ε_c, ε_u) and ᾱ_t (no ε_u: ``cfg`` off)."""
    out: dict[str, list[float | None]] = {k: [] for k in TIMELINE_SERIES}
    for k, record in enumerate(trace.steps):
        ec = get(trace, "step.model.cond", k)
        eu = get(trace, "step.model.uncond", k) if cfg else None
        out["c"].append(None if ec is None else _round(rms(ec)))
        out["u"].append(None if eu is None else _round(rms(eu)))
        out["d"].append(None if ec is None or eu is None else _round(rms(ec - eu)))
        out["cos"].append(None if ec is None or eu is None else _round(cosine(ec, eu)))
        out["abar"].append(_round(record.level.alpha_bar))
    return out


def unet_row(trace: Trace, explainer: Explainer | None) -> dict[str, str]:
    """The "same model at every step" row: its chip label (the weights' fingerprint) and its sentence."""
    from diffexplain.probe import trace_fingerprint

    fp = trace_fingerprint(trace, explainer)
    model = words(trace, explainer)["model"]
    n = len(trace)
    if fp:
        text = f"The same {model}, same weights (fingerprint {fp}): same weights at all {n} steps."
    else:
        text = f"The same {model} runs at all {n} steps (this trace records no weight fingerprint)."
    return {
        "label": f"#{fp}" if fp else model,
        "text": text + " Only its inputs change: x_t, the timestep t and the prompt.",
    }


def header(trace: Trace, *, stage: str | None = None, caption: str = "") -> dict[str, Any]:
    """The line above the view: prompt, w, seed, scheduler, steps, fork point (and a cascade's stage), and the
    model's family with who read the prompt ("Z-Image · text read by Qwen3 (an LLM)")."""
    s = trace.settings
    prompt = s.get("prompt")
    family = FAMILIES.get(trace.run_settings.family)
    reader = text_reader(trace)
    return {
        "model": " · ".join(
            part
            for part in (family.label if family else "", f"text read by {reader}" if reader else "")
            if part
        ),
        "prompt": prompt if isinstance(prompt, str) else " | ".join(map(str, prompt)),
        "w": s.get("guidance_scale"),
        "seed": s.get("seed"),
        "scheduler": (s.get("scheduler") or {}).get("class", "?"),
        "steps": len(trace),
        "forked_from": trace.forked_from,
        "stage": stage,
        "caption": caption,
    }


def view_data(
    trace: Trace,
    explainer: Explainer | None = None,
    *,
    pixel_space: bool,
    size: int = DEFAULT_SIZE,
    stage: str | None = None,
    caption: str = "",
) -> dict[str, Any]:
    """Everything the step view shows but the pictures (the page adds ``img`` per step, the widget a buffer)."""
    vocab = words(trace, explainer)
    cfg = has_cfg(trace)
    return {
        "header": header(trace, stage=stage, caption=caption),
        "help": STEP_HELP.format(**vocab),
        "panels": {k: v.format(**vocab) for k, v in STEP_PANELS.items()},
        "guidance_off": GUIDANCE_OFF.format(**vocab),
        "cfg": cfg,
        "pixel_space": pixel_space,
        "steps": [
            {"t": _round(r.timestep, 4), "abar": _round(r.level.alpha_bar), "sigma": _round(r.level.sigma)}
            for r in trace.steps
        ],
        "series": series(trace, cfg),
        "series_names": TIMELINE_SERIES,
        "timeline_title": TIMELINE_TITLE,
        "axes": TIMELINE_AXES,
        "unet": unet_row(trace, explainer),
        "display_size": size,
    }


def step_info(data: dict[str, Any], k: int) -> str:
    """The info line under the panels at step ``k`` (the same text the module writes)."""
    s, ser, n = data["steps"][k], data["series"], len(data["steps"])
    parts = [f"<b>step {k}</b> of {n} (0-based)", f"t = {s['t']:g}"]
    parts += [f"ᾱ_t = {s['abar']:.4f}", "σ_t = –" if s["sigma"] is None else f"σ_t = {s['sigma']:.3f}"]
    if ser["c"][k] is not None:
        parts.append(f"‖ε_c‖ = {ser['c'][k]:.3f}")
    if data["cfg"] and ser["d"][k] is not None:
        parts += [f"‖Δ‖ = {ser['d'][k]:.3f}", f"cos(ε_c, ε_u) = {ser['cos'][k]:.3f}"]
    elif not data["cfg"]:
        parts.append("guidance off: no ε_u, no Δ")
    return " · ".join(parts)
