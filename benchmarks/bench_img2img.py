"""How much of a picture survives image-to-image, per strength (a script, not a test).

For ``--n`` fresh one-object dataset scenes (drawn with their own seeds, not the training ones), it
renders the scene, asks for the same caption with only the object's colour changed (to another colour,
drawn per scene), and runs ``explainer.run(new caption, image=picture, strength=s)`` on the embedded
default model at each strength s. The attribute checker reads the result back against the *new* scene:

- ``new colour``: the object has the asked-for colour;
- ``old shape``, ``old place``: the object kept the picture's shape, its position;
- ``edited``: all three at once (the edit a person wanted: recoloured, nothing else changed);
- ``old colour``: the object still has the picture's colour (the edit did not take).

Each result is scored for exactly one object (the scenes have one). The new caption names the shape and
the place too, so at s = 1 (the picture noised to the first timestep: nearly text-to-image) they come from
the caption, not the picture. What only the picture knows shows in two medians over the results with an
object: ``shift``, how far the object's centre moved from the picture's (in pixels), and ``area change``,
|its area / the picture's − 1| (the caption names the size in half the scenes, and never the jitter).
``input right`` checks that the checker reads the rendered pictures themselves right.

    python benchmarks/bench_img2img.py [--n 96] [--steps 25] [--batch 16] [--json out.json]

``--quick`` (what CI runs, to catch a crash; its figures mean nothing): 2 scenes, 5 steps (one step at s = 0.2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # this checkout's diffexplain, not an installed one

STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)
SCENE_SEED = "bench_img2img"  # scene i: random.Random(f"{SCENE_SEED}:{i}"), no training seed is a string
QUICK = {"n": 2, "steps": 5}
FIGURES = ("edited", "new colour", "old shape", "old place", "old colour")


def recoloured(scene, rng: random.Random):
    """``scene`` with its one object in another colour, drawn by ``rng`` (everything else kept)."""
    from diffexplain.data.vocab import COLOURS

    (obj,) = scene.objects
    colour = rng.choice([c for c in COLOURS if c != obj.colour])
    return dataclasses.replace(scene, objects=(dataclasses.replace(obj, colour=colour),))


def draw_cases(n: int) -> list[tuple]:
    """``n`` (scene, picture, recoloured scene, run seed): fresh one-object scenes, each with its own seeds."""
    from diffexplain.data import render_scene, sample_scene

    cases = []
    for i in range(n):
        rng = random.Random(f"{SCENE_SEED}:{i}")
        scene = sample_scene(rng, two_object_share=0.0)
        picture = render_scene(scene, size=64, seed=rng.randrange(2**31))
        cases.append((scene, picture, recoloured(scene, rng), rng.randrange(2**31)))
    return cases


def measure(n: int, steps: int, batch: int, strengths: tuple[float, ...] = STRENGTHS) -> dict:
    """Shares of results (see the module docstring) per strength, over ``n`` scenes."""
    import diffexplain
    from diffexplain.data import caption
    from diffexplain.data.checker import score

    explainer = diffexplain.load_default()
    cases = draw_cases(n)
    inputs = [score(picture, scene) for scene, picture, _new, _seed in cases]
    input_right = sum(s.all_right for s in inputs) / n
    rows: dict[str, dict] = {}
    for strength in strengths:
        counts, steps_run, shifts, areas = dict.fromkeys(FIGURES, 0), 0, [], []
        start = time.perf_counter()
        for first in range(0, n, batch):
            chunk = cases[first : first + batch]
            trace = explainer.run(
                [caption(new) for _scene, _picture, new, _seed in chunk],
                image=[picture for _scene, picture, _new, _seed in chunk],
                strength=strength,
                num_inference_steps=steps,
                seed=chunk[0][3],  # one generator per batch: each scene's draws still differ
                attention_maps=False,
                restart=False,
                progress=False,
            )
            steps_run = len(trace)  # ⌊N·s⌋: the steps after the entry point
            given = inputs[first : first + batch]
            for image, (scene, _picture, new, _seed), before in zip(trace.images, chunk, given, strict=True):
                obj, was = score(image, new).objects[0], before.objects[0].found
                if obj.found is not None and was is not None:
                    (x, y), (x0, y0) = obj.found.centroid, was.centroid
                    shifts.append(64 * ((x - x0) ** 2 + (y - y0) ** 2) ** 0.5)
                    areas.append(abs(obj.found.area / was.area - 1))
                counts["new colour"] += obj.colour
                counts["old shape"] += obj.shape
                counts["old place"] += obj.position
                counts["edited"] += obj.colour and obj.shape and obj.position
                counts["old colour"] += obj.found is not None and obj.found.colour == scene.objects[0].colour
        rows[f"{strength:g}"] = {k: v / n for k, v in counts.items()} | {
            "steps_run": steps_run,
            "shift_px": statistics.median(shifts) if shifts else None,
            "area_change": statistics.median(areas) if areas else None,
            "seconds": time.perf_counter() - start,
        }
    return {
        "_settings": {"n": n, "steps": steps, "guidance_scale": explainer.defaults.get("guidance_scale")},
        "input_right": input_right,
        "strengths": rows,
    }


def print_table(figures: dict) -> None:
    settings = figures["_settings"]
    print(
        f"{settings['n']} one-object scenes, the colour changed in the caption, {settings['steps']} DDIM "
        f"steps, w = {settings['guidance_scale']}; the checker reads the inputs right: {figures['input_right']:.0%}"
    )
    print("| strength | steps run | " + " | ".join(FIGURES) + " | shift (px) | area change |")
    print("|---|---|" + "---|" * (len(FIGURES) + 2))
    for strength, row in figures["strengths"].items():
        shares = " | ".join(f"{row[k]:.0%}" for k in FIGURES)
        medians = " | ".join("–" if row[k] is None else f"{row[k]:.2f}" for k in ("shift_px", "area_change"))
        print(f"| {strength} | {row['steps_run']} | {shares} | {medians} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=96, help="scenes (default 96)")
    parser.add_argument("--steps", type=int, default=25, help="num_inference_steps (default 25)")
    parser.add_argument("--batch", type=int, default=16, help="pictures per run (default 16)")
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="a smoke run (CI), no figures to quote")
    args = parser.parse_args(argv)
    if args.quick:
        args = parser.parse_args(argv, argparse.Namespace(**QUICK))
    figures = measure(args.n, args.steps, args.batch)
    print_table(figures)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
