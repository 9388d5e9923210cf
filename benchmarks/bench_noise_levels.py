"""How well a model folder's U-Net predicts the noise at each noise level (a script, not a test).

Notation: z0 = scaling_factor · E(x) for held-out dataset pictures x, ε ~ N(0, I),
z_t = √ᾱ_t·z0 + √(1−ᾱ_t)·ε, ε̂ = U-Net(z_t, t, caption), x̂0 = (z_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t.

For each t it prints the ε̂ error, the error of the trivial answer ε̂ = z_t/√(1−ᾱ_t) (which gives
x̂0 = 0), and the x̂0 error next to the per-element variance of z0 (the x̂0 error of answering the
data mean). Sampling from pure noise works only where the x̂0 error is below that variance at the
sampler's first steps (t = 960 for 25-step DDIM on the default schedule).

    python benchmarks/bench_noise_levels.py [FOLDER] [--n 128] [--json out.json]

``--quick`` (what CI runs, to catch a crash; its figures mean nothing): 2 pictures, every noise level.
"""

from __future__ import annotations

import argparse
import json

import torch

DEFAULT_FOLDER = "diffexplain/models/default"
TIMESTEPS = (990, 960, 920, 880, 800, 600, 300, 50)
QUICK = {"n": 2}


@torch.no_grad()
def measure(folder: str, n: int, timesteps: tuple[int, ...] = TIMESTEPS, seed: int = 0) -> dict:
    """Per-timestep errors of the folder's U-Net on ``n`` held-out pictures (see the module docstring)."""
    from diffusers import DDPMScheduler

    from diffexplain.data import held_out
    from diffexplain.models.store import load_model_parts
    from diffexplain.models.text import encode_captions, load_text_encoder

    parts = load_model_parts(folder)
    unet, vae = parts["unet"], parts["vae"]
    tokenizer, encoder = load_text_encoder()
    pixels, captions = held_out(n, size=int(vae.config.sample_size)).batch(range(n))
    z0 = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor  # [n, C, h, w]
    cond = encode_captions(tokenizer, encoder, captions)  # [n, T, D]
    alphas_cumprod = DDPMScheduler.from_config(parts["scheduler"].config).alphas_cumprod
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for t in timesteps:
        noise = torch.randn(z0.shape, generator=generator)
        a = alphas_cumprod[t]
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
        eps = unet(z_t, t, encoder_hidden_states=cond).sample
        pred_x0 = (z_t - (1 - a).sqrt() * eps) / a.sqrt()
        rows.append(
            {
                "t": t,
                "alpha_bar": a.item(),
                "eps_mse": (eps - noise).pow(2).mean().item(),
                "trivial_eps_mse": (z_t / (1 - a).sqrt() - noise).pow(2).mean().item(),
                "pred_x0_mse": (pred_x0 - z0).pow(2).mean().item(),
            }
        )
    return {"folder": folder, "n": n, "z0_variance": z0.var().item(), "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    """Print the table (and write JSON with ``--json``)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", nargs="?", default=DEFAULT_FOLDER)
    parser.add_argument("--n", type=int, default=128, help="held-out pictures (default 128)")
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run (CI), no figures to quote: see the text above"
    )
    args = parser.parse_args(argv)
    if args.quick:  # the quick sizes stand in for the defaults; options given on the command line win
        args = parser.parse_args(argv, argparse.Namespace(**QUICK))
    if args.n < 1:
        parser.error("--n must be at least 1")
    result = measure(args.folder, args.n)
    print(f"{args.folder}: {args.n} held-out pictures, variance of z0 {result['z0_variance']:.3f}")
    print(f"{'t':>5} {'ᾱ_t':>8} {'ε̂ MSE':>9} {'trivial ε':>10} {'x̂0 MSE':>9}")
    for r in result["rows"]:
        print(
            f"{r['t']:>5} {r['alpha_bar']:>8.4f} {r['eps_mse']:>9.5f} "
            f"{r['trivial_eps_mse']:>10.5f} {r['pred_x0_mse']:>9.3f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
