"""One prompt, explained without a browser: the files behind ``diffexplain explain``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image, ImageChops

from diffexplain.probe import decode_latents
from diffexplain.render import strip, to_pil

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace

STRIP_FRAMES = 8
HTML_NAME = "trace.html"  # the one-file page, written beside the other outputs by default


def open_model(model: str | None = None, *, device: str | None = None) -> Explainer:
    """The embedded model (``None`` or "default"), the embedded flow model ("flow"), a ``diffexplain train``
    folder, or a diffusers Stable Diffusion folder/id."""
    from diffexplain.devices import pick_device
    from diffexplain.models.default import load_default, load_flow_default, load_model

    device = pick_device(device)
    dtype = torch.float16 if device == "cuda" else torch.float32
    if model is None or model == "default":
        return load_default(device=device)
    if model == "flow":
        return load_flow_default(device=device)
    if (Path(model) / "model.json").is_file():
        return load_model(model, device=device)
    from diffexplain.explainer import Explainer

    return Explainer.from_pretrained(model, torch_dtype=dtype).to(device)


def pred_x0_strip(
    explainer: Explainer, trace: Trace, frames: int = STRIP_FRAMES, size: int = 128
) -> Image.Image:
    """x̂0, decoded, at ``frames`` evenly spaced steps, labelled by step."""
    n = len(trace)
    steps = sorted({round(i * (n - 1) / max(1, frames - 1)) for i in range(frames)})
    images = [to_pil(decode_latents(explainer, trace["step.pred_x0", k]), size=size) for k in steps]
    return strip(images, [f"step {k}" for k in steps])


def cfg_comparison(off: Trace, on: Trace, size: int = 128) -> Image.Image:
    """Guidance off | guidance on | their absolute difference, same seed and prompt."""
    a, b = to_pil(off["decode.image"], size=size), to_pil(on["decode.image"], size=size)
    w_on = on.run_settings.guidance_scale
    return strip([a, b, ImageChops.difference(a, b)], ["CFG off (w=1)", f"CFG on (w={w_on:g})", "difference"])


def write_report(
    prompt: str,
    out: str | Path,
    *,
    model: str | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    scheduler: str | None = None,
    device: str | None = None,
    explainer: Explainer | None = None,
    html: str | Path | bool = True,
) -> dict[str, Path]:
    """Run ``prompt`` with guidance on and off and write image, x̂0 strip, CFG comparison, trace and a
    one-file HTML page into ``out``. ``html``: True (``out/trace.html``), another path, or False (none)."""
    explainer = explainer or open_model(model, device=device)
    if scheduler:
        explainer.set_scheduler(scheduler)
    defaults = getattr(explainer, "defaults", {}) or {}
    steps = steps or int(defaults.get("num_inference_steps", 25))
    scale = guidance_scale if guidance_scale is not None else float(defaults.get("guidance_scale", 7.5))
    out = Path(out)
    page = out / HTML_NAME if html is True else (Path(html) if html else None)
    if page is not None and page.is_dir():
        raise IsADirectoryError(f"html={str(page)!r} is a folder: expected a file name such as page.html")
    out.mkdir(parents=True, exist_ok=True)
    on = explainer.run(prompt, num_inference_steps=steps, guidance_scale=scale, seed=seed)
    off = explainer.run(prompt, num_inference_steps=steps, guidance_scale=1.0, seed=seed)
    paths = {
        "image": out / "image.png",
        "x̂0 strip": out / "pred_x0_strip.png",
        "CFG on/off": out / "cfg_comparison.png",
        "trace": out / "trace.safetensors",
    }
    if page is not None:
        paths["HTML page"] = page
    on.images[0].save(paths["image"])
    pred_x0_strip(explainer, on).save(paths["x̂0 strip"])
    cfg_comparison(off, on).save(paths["CFG on/off"])
    on.save(paths["trace"])  # with the decoded previews, which the page reuses
    if page is not None:
        page.parent.mkdir(parents=True, exist_ok=True)
        on.to_html(page, compare=off)
    return paths
