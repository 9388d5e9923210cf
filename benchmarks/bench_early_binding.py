"""Does the model's x̂0 put each caption colour on its own side during sampling? (a script, not a test)

For two-object left/right scenes, it samples with diffexplain's own loop at the model's defaults (DDIM,
classifier-free guidance) and, at a few steps, decodes the kept guess of the clean picture,
x̂0 = (x_t − √(1 − ᾱ_t)·ε̂) / √ᾱ_t, and measures how far object A's colour sits on A's side:

    side score = (mean RGB of A's half − mean RGB of B's half) · (RGB of A's colour − RGB of B's colour)

positive when A's colour is on A's side, negative when it is on B's side. Each scene runs twice from
the same noise, the second time with the two objects' words exchanged, so a model that ignores the
words' order scores + and − equally often: mean ≈ 0 and share > 0 ≈ 0.5. At the first step x̂0 is the
model's expectation of the clean picture given the caption; a model that has learned binding puts the
colours on their sides there already, whatever the noise.

    python benchmarks/bench_early_binding.py [FOLDER] [--scenes 24] [--steps N] [--json out.json]

``--quick`` (what CI runs, to catch a crash; its figures mean nothing): one scene, 3 sampling steps.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_model import model_parser, parse_with_quick, prompt_mix  # noqa: E402
from bench_position import exchanged  # noqa: E402

STEPS_REPORTED = (0, 2, 5, 10)
QUICK = {"scenes": 1, "steps": 3}


def colour_rgb(name: str):
    """The colour word's RGB in [0, 1], as the dataset draws it."""
    import numpy as np

    from diffexplain.data.render import object_rgb

    return np.array(object_rgb(name)) / 255


def side_score(picture, scene) -> float:
    """Side score of a decoded picture [3, H, W] in [0, 1] for a left/right scene (see the module text)."""
    a, b = scene.objects
    half = picture.shape[-1] // 2
    left, right = picture[:, :, :half].mean((1, 2)), picture[:, :, half:].mean((1, 2))
    own, other = (left, right) if a.position == "left" else (right, left)
    return float((own - other) @ (colour_rgb(a.colour) - colour_rgb(b.colour)))


def render_array(scene):
    """The dataset's picture of ``scene`` as [3, H, W] in [0, 1]."""
    from diffexplain.data.render import render_scene, to_array

    return (to_array(render_scene(scene)) + 1) / 2  # to_array: [3, H, W] in [-1, 1]


def measure(explainer, n: int, steps: int | None = None) -> dict:
    """Mean side score and share of positive ones per reported step, over ``n`` scenes × 2 word orders.

    Runs diffexplain's own traced loop at the model's default steps (or ``steps``) and guidance, keeping x̂0.
    """
    import numpy as np

    from diffexplain.data.scenes import caption
    from diffexplain.probe import decode_latents

    scenes = [s for s in prompt_mix(quick=False)[1] if s.objects[0].position in ("left", "right")][:n]
    versions = [v for s in scenes for v in (s, exchanged(s, colours=True, shapes=True))]
    scores: dict[int, list[float]] = {step: [] for step in STEPS_REPORTED}
    options = {"num_inference_steps": steps} if steps else {}
    timesteps: list[int] = []
    for j, version in enumerate(versions):
        # seed j // 2: both word orders of a scene start from the same noise
        trace = explainer.run(
            caption(version), seed=j // 2, keep="step.pred_x0", decode=False, progress=False, **options
        )
        timesteps = [int(record.timestep) for record in trace.steps]
        for i in (i for i in scores if i < len(timesteps)):
            picture = (decode_latents(explainer, trace["step.pred_x0", i])[0] + 1) / 2  # [3, H, W] in [0, 1]
            scores[i].append(side_score(picture.numpy(), version))
    reference = [side_score(render_array(v), v) for v in versions]  # the score's sign is right on all
    scores_by_name = {"dataset pictures": reference} | {
        f"step {i} (t={timesteps[i]})": v for i, v in scores.items() if v
    }
    return {
        name: {
            "mean": float(np.mean(v)),
            "share_positive": float(np.mean(np.array(v) > 0)),
            "mean_abs": float(np.mean(np.abs(v))),
            "n": len(v),
        }
        for name, v in scores_by_name.items()
    }


def main(argv: list[str] | None = None) -> dict:
    parser = model_parser(__doc__)
    parser.add_argument("--scenes", type=int, default=24, help="left/right scenes (default 24)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    args = parse_with_quick(parser, argv, QUICK)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from diffexplain import load_model

    r = measure(load_model(args.folder, progress=False), args.scenes, args.steps)
    print(f"model {args.folder}: {args.scenes} left/right scenes, each in both word orders, same noise")
    for step, v in r.items():
        print(
            f"  {step:<18} side score mean {v['mean']:+.4f} (mean size {v['mean_abs']:.4f}),"
            f" positive in {100 * v['share_positive']:.0f} %"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return r


if __name__ == "__main__":
    main()
