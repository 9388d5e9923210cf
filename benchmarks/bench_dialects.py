"""The two dialects counted: the ε model and the flow model at 4, 8 and 25 steps (a script, not a test).

Both embedded models draw the same plain captions from the same noise seeds (``bench_model``'s plain
mix: 300 one-object and 200 two-object scenes), each through a plain diffusers ``StableDiffusionPipeline``
at its default guidance scale; the attribute checker reads colour, shape and place back from the pixels.
The ε model runs with its own scheduler, DDIM with "leading" spacing: at few steps its first step is not
the noisiest (t = 751 of 999 at 4 steps). It cannot start at t = 999: its cosine schedule's ᾱ_999 is about
2·10⁻⁹, so x̂0 = (x_t − √(1−ᾱ)·ε̂)/√ᾱ divides the prediction's error by 5·10⁻⁵ ("trailing" spacing gives
no picture right). The flow model's x̂0 = x_t − σ·v divides by nothing, so it starts at σ ≈ 1 at any count.

    python benchmarks/bench_dialects.py [--steps 4 8 25] [--guidance-scale W] [--only flow] [--json out.json] [--quick]

``--guidance-scale`` runs both at one w (default: each model's own, ``model.json``'s defaults: ε 5, flow 3);
``--only`` keeps the rows whose label holds that text.

``--quick`` is a smoke run (what CI runs): 2 steps, 3 + 2 prompts; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import PLAIN_SEED, build_pipeline, generate, model_settings, plain_prompt_mix  # noqa: E402

MODELS = {  # row label → (model folder, scheduler config overrides)
    "ε model, DDIM (its default)": ("diffexplain/models/default", {}),
    "flow model, Euler (its default)": ("diffexplain/models/flow", {}),
}


def run(steps: list[int], quick: bool, batch: int, scale: float | None = None, only: str = "") -> dict:
    """Checker scores per model row and step count."""
    import random

    from diffexplain.data.checker import score, summarise
    from diffexplain.data.scenes import caption

    one, two = plain_prompt_mix(quick, PLAIN_SEED)
    scenes = one + two
    prompts = [caption(s) for s in scenes]
    seeds = random.Random(PLAIN_SEED + 1).sample(range(10**6), len(scenes))
    rows: dict = {}
    for label, (folder, overrides) in MODELS.items():
        if only not in label:
            continue
        pipe = build_pipeline(folder)
        if overrides:
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **overrides)
        settings = model_settings(folder)
        if scale is not None:
            settings["guidance_scale"] = scale
        for n in steps:
            t0 = time.perf_counter()
            images = generate(pipe, prompts, seeds, {**settings, "steps": n}, batch=batch)
            scores = [score(img, scene) for img, scene in zip(images, scenes, strict=True)]
            rows.setdefault(label, {})[str(n)] = {
                "guidance_scale": settings["guidance_scale"],
                "one_object": summarise(scores[: len(one)]),
                "two_object": summarise(scores[len(one) :]),
                "seconds": time.perf_counter() - t0,
            }
            print(f"{label}, {n} steps: done", file=sys.stderr, flush=True)
    return {"rows": rows, "n_one": len(one), "n_two": len(two)}


def report(r: dict, steps: list[int]) -> None:
    """One table: per model row, one-object all right and two objects both right, per step count."""
    head = "".join(f"{f'{n} steps: 1 obj / 2 obj':>26}" for n in steps)
    print(f"\nplain captions ({r['n_one']} one-object, {r['n_two']} two-object), all attributes right")
    print(f"{'model, sampler, w':34}{head}")
    for label, by_steps in r["rows"].items():
        cells = "".join(
            f"{100 * by_steps[str(n)]['one_object']['all_right']:>17.1f} / "
            f"{100 * by_steps[str(n)]['two_object']['all_right']:>5.1f}%"
            for n in steps
        )
        w = next(iter(by_steps.values()))["guidance_scale"]
        print(f"{f'{label}, w = {w:g}':34}{cells}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="step counts (default 4 8 25)")
    parser.add_argument("--batch", type=int, default=30, help="prompts per pipeline call (default 30)")
    parser.add_argument(
        "--guidance-scale", type=float, default=None, help="one w for both (default: each's own)"
    )
    parser.add_argument("--only", default="", help="keep the rows whose label holds this text, e.g. flow")
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="a smoke run (CI): 2 steps, 5 prompts")
    args = parser.parse_args(argv)
    warnings.filterwarnings(
        "ignore"
    )  # diffusers' scheduler-config notices; the few-step warning is the point
    steps = args.steps or ([2] if args.quick else [4, 8, 25])
    r = run(steps, args.quick, args.batch, args.guidance_scale, args.only)
    r["steps"], r["quick"], r["load_avg"] = steps, args.quick, os.getloadavg()
    report(r, steps)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return r


if __name__ == "__main__":
    main()
