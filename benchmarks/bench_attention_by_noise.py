"""Do the cross-attention layers read each object's words in its half, at each noise level? (a script)

Sampling decides where each object goes in its first, noisiest steps. There the noisy latents show
nothing yet, so a layer can read "red" in the left half only if its queries know where they are. This
script measures that on the training task itself: two-object dataset pictures (held-out seed), encoded
with the model's VAE, noised to z_t = √ᾱ_t·z0 + √(1−ᾱ_t)·ε at a few t, one U-Net call each with the
caption. For every object's colour and shape word and every cross-attention layer it reports

    m = share of the word's attention (normalised over the picture) that comes from the object's half

averaged over words and pictures (the quantity ``training/attention_loss.py`` trains towards 1).
0.5 means the layer reads the word alike in both halves; only well above 0.5 at t ≥ 900 can a layer
put the caption's colours on their sides from noise. Unlike ``bench_attention.py``, which records
attention during sampling (where it follows whatever the picture already shows), the picture here is
always the caption's own, so the score at low t is content-driven and at high t position-driven.

    python benchmarks/bench_attention_by_noise.py [FOLDER] [--pictures 64] [--json out.json]

``--quick`` (what CI runs, to catch a crash; its figures mean nothing): 2 pictures, every noise level.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_model import build_pipeline, model_parser, parse_with_quick  # noqa: E402

TIMESTEPS = (990, 960, 920, 880, 800, 600, 300, 50)
QUICK = {"pictures": 2}


def measure(pipe, n: int, timesteps: tuple[int, ...] = TIMESTEPS) -> dict:
    """Mean own-half share m per layer and timestep, over ``n`` two-object pictures (every layer, also
    the first down block, which the attention loss leaves free)."""
    import torch
    from diffusers import DDPMScheduler

    from diffexplain.data import ShapesDataset
    from diffexplain.models.text import encode_captions
    from diffexplain.training.attention_loss import AttentionSupervision

    data = ShapesDataset(seed=1_000_003, size=pipe.vae.config.sample_size, two_object_share=1.0)
    pixels, captions = data.batch(range(n))
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # the model's own ᾱ_t
    gen = torch.Generator().manual_seed(0)
    shares: dict[str, dict[int, float]] = {}
    every_layer = AttentionSupervision(pipe.unet, pipe.tokenizer, skip=())
    with torch.no_grad(), every_layer as supervision:
        z0 = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor  # [n, 4, h, w]
        states = encode_captions(pipe.tokenizer, pipe.text_encoder, captions)  # [n, 32, 384]
        for t in timesteps:
            steps = torch.full((n,), t)
            z_t = noise_scheduler.add_noise(z0, torch.randn(z0.shape, generator=gen), steps)
            pipe.unet(z_t, steps, encoder_hidden_states=states)
            for name, own in supervision.own_shares(captions).items():
                layer = name.split(".transformer_blocks")[0]
                shares.setdefault(layer, {})[t] = float(own.mean())
    return {"pictures": n, "timesteps": list(timesteps), "own_half_share": shares}


def main(argv: list[str] | None = None) -> dict:
    parser = model_parser(__doc__)
    parser.add_argument("--pictures", type=int, default=64, help="two-object pictures (default 64)")
    args = parse_with_quick(parser, argv, QUICK)
    warnings.filterwarnings("ignore", category=FutureWarning)  # diffusers' scheduler-config notices
    result = measure(build_pipeline(args.folder), args.pictures)
    width = max(len(k) for k in result["own_half_share"])
    print(f"model {args.folder}: {args.pictures} two-object pictures; own-half share m (0.5 = no place)")
    print(f"  {'layer':<{width}}  " + "  ".join(f"t={t:<4}" for t in result["timesteps"]))
    for layer, by_t in result["own_half_share"].items():
        print(f"  {layer:<{width}}  " + "  ".join(f"{by_t[t]:6.2f}" for t in result["timesteps"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
