"""Does the model's x̂0 put each caption colour on its own side during sampling? (a script, not a test)

For two-object left/right scenes, it samples with DDIM and classifier-free guidance at the model's
defaults and, at a few steps, decodes the guess of the clean picture,
x̂0 = (x_t − √(1 − ᾱ_t)·ε̂) / √ᾱ_t, and measures how far object A's colour sits on A's side:

    side score = (mean RGB of A's half − mean RGB of B's half) · (RGB of A's colour − RGB of B's colour)

positive when A's colour is on A's side, negative when it is on B's side. Each scene runs twice from
the same noise, the second time with the two objects' words exchanged, so a model that ignores the
words' order scores + and − equally often: mean ≈ 0 and share > 0 ≈ 0.5. At the first step x̂0 is the
model's expectation of the clean picture given the caption; a model that has learned binding puts the
colours on their sides there already, whatever the noise.

    python benchmarks/bench_early_binding.py [FOLDER] [--scenes 24] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_model import DEFAULT_FOLDER, build_pipeline, model_settings, prompt_mix  # noqa: E402
from bench_position import exchanged  # noqa: E402

STEPS_REPORTED = (0, 2, 5, 10)


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


def measure(pipe, settings: dict, n: int) -> dict:
    """Mean side score and share of positive ones per reported step, over ``n`` scenes × 2 word orders."""
    import numpy as np
    import torch

    from diffexplain.data.scenes import caption

    scenes = [s for s in prompt_mix(quick=False)[1] if s.objects[0].position in ("left", "right")][:n]
    scheduler, guidance = pipe.scheduler, settings["guidance_scale"]
    size = settings["image_size"] // pipe.vae_scale_factor
    scores: dict[int, list[float]] = {step: [] for step in STEPS_REPORTED}
    for k, scene in enumerate(scenes):
        for version in (scene, exchanged(scene, colours=True, shapes=True)):
            cond, uncond = pipe.encode_prompt([caption(version)], "cpu", 1, True, negative_prompt=[""])
            states = torch.cat([uncond, cond])
            latents = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(k))  # same noise
            scheduler.set_timesteps(settings["steps"])
            for i, t in enumerate(scheduler.timesteps):
                with torch.no_grad():
                    eps = pipe.unet(torch.cat([latents, latents]), t, encoder_hidden_states=states).sample
                eps_uncond, eps_cond = eps.chunk(2)
                eps_guided = eps_uncond + guidance * (eps_cond - eps_uncond)
                if i in scores:
                    alpha_bar = scheduler.alphas_cumprod[t]
                    pred_x0 = (latents - (1 - alpha_bar).sqrt() * eps_guided) / alpha_bar.sqrt()
                    with torch.no_grad():
                        picture = (pipe.vae.decode(pred_x0).sample[0].clamp(-1, 1) + 1) / 2
                    scores[i].append(side_score(picture.numpy(), version))
                latents = scheduler.step(eps_guided, t, latents).prev_sample
    timesteps = [int(t) for t in scheduler.timesteps]
    reference = [  # the dataset's own pictures of the same scenes: the score's sign is right on all
        side_score(render_array(version), version)
        for scene in scenes
        for version in (scene, exchanged(scene, colours=True, shapes=True))
    ]
    scores_by_name = {"dataset pictures": reference} | {
        f"step {i} (t={timesteps[i]})": v for i, v in scores.items() if i < len(timesteps)
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "folder", nargs="?", default=DEFAULT_FOLDER, help=f"model folder (default {DEFAULT_FOLDER})"
    )
    parser.add_argument("--scenes", type=int, default=24, help="left/right scenes (default 24)")
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    pipe, settings = build_pipeline(args.folder), model_settings(args.folder)
    r = measure(pipe, settings, args.scenes)
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
