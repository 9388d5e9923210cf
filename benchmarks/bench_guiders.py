"""Guidance methods compared on the embedded model: share of pictures right and saturation, per method.

Fresh plain two-object captions ("a red circle on the left and a blue square on the right"), drawn from
``--prompt-seed``, each with its own noise seed, at the model's default steps and w; every picture is
scored by the attribute checker (``all_right``: both objects with the right colour, shape and position).
Saturation is measured two ways on the decoded pictures (pixels in [0, 1]): the share of pixels at the
gamut's edge (a channel at ≤ 1/255 or ≥ 254/255 while the pixel is coloured: chroma ≥ 0.5) and the mean
chroma (max − min of the channels) of the coloured pixels. The model time per picture is measured too
(the guider's cost: the same two branches per step for every method here).

    python benchmarks/bench_guiders.py                     # 120 captions, the table of docs/concepts/guidance.md
    python benchmarks/bench_guiders.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from diffexplain import load_default
from diffexplain.data.checker import score
from diffexplain.data.scenes import Scene, caption, sample_scene
from diffexplain.guidance_counts import saturation
from diffexplain.guiders import APG, CFG, CFGPlusPlus, CFGZeroStar
from diffexplain.guiders.menu import pag_unet

PROMPT_SEED = 20_261_206
BATCH = 24


def methods() -> dict[str, Any]:
    """The methods compared, by label: None is the loop's own ε_u + w·Δ (the embedded model samples with
    DDIM, which CFG++ needs)."""
    return {
        "CFG": None,
        "CFG + rescale 0.7": CFG(rescale=0.7),
        "CFG in [0.2, 0.8)": CFG(start=0.2, stop=0.8),
        "APG (β = −0.5)": APG(momentum=-0.5),
        "CFG-Zero*": CFGZeroStar(zero_init_steps=1),
        "CFG-Zero*, no zero init": CFGZeroStar(zero_init_steps=0),
        "CFG++ (λ = 0.6)": CFGPlusPlus(lam=0.6),
        "CFG++ (λ = 0.9)": CFGPlusPlus(lam=0.9),
        "PAG (middle block)": pag_unet(),
    }


def plain_two_object_scenes(n: int, seed: int) -> list[Scene]:
    """``n`` fresh two-object scenes with plain captions (no size, no background word)."""
    rng = random.Random(seed)
    scenes = []
    for _ in range(n):
        drawn = sample_scene(rng, two_object_share=1.0)
        scenes.append(Scene(drawn.objects, drawn.background, say_size=(False, False)))
    return scenes


def run_method(
    explainer: Any, guider: Any, scenes: list[Scene], seeds: list[int], steps: int
) -> dict[str, Any]:
    right, pictures, seconds, loop_steps = [], [], 0.0, 0
    calls: list[int] = []
    counter = explainer.model.register_forward_hook(lambda *args: calls.append(1))
    height, width = explainer.family.default_size()
    for start in range(0, len(scenes), BATCH):
        chunk = scenes[start : start + BATCH]
        shape = explainer.family.latent_shape(1, height, width)  # x_T per seed, as run(seed=s) draws it
        noise = torch.cat(
            [
                randn_tensor(shape, generator=torch.Generator().manual_seed(s))
                for s in seeds[start : start + BATCH]
            ]
        )
        began = time.perf_counter()
        trace = explainer.run(
            [caption(s) for s in chunk],
            num_inference_steps=steps,
            seed=0,
            latents=noise,
            guider=guider,
            keep=["decode.image"],
            restart=False,
            attention_maps=False,
            progress=False,
        )
        seconds += time.perf_counter() - began
        loop_steps += len(trace)
        for scene, image in zip(chunk, trace.images, strict=True):
            right.append(score(image, scene).all_right)
            pictures.append(image)
    counter.remove()
    edge, chroma = saturation(pictures)
    return {
        "n": len(right),
        "share_right": float(np.mean(right)),
        "gamut_edge_share": edge,
        "mean_chroma": chroma,
        "seconds_per_picture": seconds / len(right),
        "model_calls_per_step": len(calls) / max(loop_steps, 1),  # one batched call holds both branches
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 captions, 3 steps: checks that it runs")
    parser.add_argument(
        "--captions", type=int, default=120, help="fresh captions, one seed each (default 120)"
    )
    parser.add_argument("--prompt-seed", type=int, default=PROMPT_SEED)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    n = 4 if args.quick else args.captions
    explainer = load_default(progress=False)
    steps = 3 if args.quick else int(explainer.defaults.get("num_inference_steps", 25))
    w = float(explainer.defaults.get("guidance_scale", 5.0))
    scenes = plain_two_object_scenes(n, args.prompt_seed)
    seeds = list(range(args.prompt_seed, args.prompt_seed + n))
    results = {}
    for label, guider in methods().items():
        results[label] = run_method(explainer, guider, scenes, seeds, steps)
    print(f"embedded model, {n} plain two-object captions (one seed each), {steps} steps, w = {w:g}")
    print(
        f"{'method':24} {'right':>7} {'at gamut edge':>14} {'mean chroma':>12} {'s / picture':>12} "
        f"{'model calls / step':>19}"
    )
    for label, r in results.items():
        print(
            f"{label:24} {100 * r['share_right']:6.1f}% {100 * r['gamut_edge_share']:13.1f}% "
            f"{r['mean_chroma']:12.3f} {r['seconds_per_picture']:12.3f} {r['model_calls_per_step']:19.2f}"
        )
    if args.json:
        settings = {"captions": n, "steps": steps, "guidance_scale": w, "prompt_seed": args.prompt_seed}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"_settings": settings, "methods": results}, f, indent=2)


if __name__ == "__main__":
    main()
