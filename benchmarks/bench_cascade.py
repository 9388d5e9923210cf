"""Measure the embedded pixel cascade against its bar, beside the latent default model (a script, not a test).

Bar (issue #16): one-object prompts at the default settings, colour ≥ 95 %, shape ≥ 90 %, position ≥ 95 %
by the attribute checker; at most 3 s per 64×64 picture on 2 cores. Generation runs diffusers' own
``IFPipeline`` then ``IFSuperResolutionPipeline`` over the cascade's parts (``pixel_cascade_pipelines``),
and ``StableDiffusionPipeline`` over the latent model's, on the same prompts and seeds.

Sections: ``one`` plain one-object captions as users write them ("a red circle on the left"), drawn
from ``--plain-seed`` as benchmarks/bench_model.py draws them; ``two`` plain two-object captions;
``stage1`` stage I's 16×16 pictures alone (upscaled for the checker: what stage II starts from);
``speed`` one picture, batch 1, warm. ``--compare`` measures the latent model too.

    python benchmarks/bench_cascade.py [FOLDER] [--quick] [--compare] [--json out.json] [--record]

``--quick`` is a smoke run (what CI runs, with ``--compare``, to catch a crash; its figures mean nothing):
3 one-object and 2 two-object prompts, 2 steps in each stage and in the latent model (unless given), one
timed picture after the warm-up; ``--record`` is refused with it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_model import PLAIN_SEED, build_pipeline, plain_prompt_mix  # noqa: E402

GOALS = {"colour": 95.0, "shape": 90.0, "position": 95.0}
MAX_SECONDS = 3.0
QUICK = {"base_steps": 2, "sr_steps": 2}  # --quick's steps per stage (the latent model's too)


def cascade_images(stages, prompts, seeds, settings, *, stage_one_only: bool = False, batch: int = 10):
    """Pictures [B, 3, 64, 64] in [-1, 1] (or stage I's [B, 3, 16, 16]); sample k seeded ``seeds[k]`` in
    both stages, as a Cascade seeds them."""
    stage_1, stage_2 = stages
    out = []
    for i in range(0, len(prompts), batch):
        chunk, chunk_seeds = prompts[i : i + batch], seeds[i : i + batch]
        one = settings["I"]
        low = stage_1(
            chunk,
            num_inference_steps=one["num_inference_steps"],
            guidance_scale=one["guidance_scale"],
            generator=[torch.Generator().manual_seed(s) for s in chunk_seeds],
            output_type="pt",
            clean_caption=False,
        ).images
        if stage_one_only:
            out.append(low)
            continue
        two = settings["II"]
        out.append(
            stage_2(
                image=low,
                prompt=chunk,
                num_inference_steps=two["num_inference_steps"],
                guidance_scale=two["guidance_scale"],
                noise_level=two.get("noise_level", 250),
                generator=[torch.Generator().manual_seed(s) for s in chunk_seeds],
                output_type="pt",
                clean_caption=False,
            ).images
        )
    return torch.cat(out)


def to_pil(pictures: torch.Tensor, size: int = 64):
    """[-1, 1] pictures → PIL images at ``size`` (bilinear upscaling for stage I's 16 px)."""
    from PIL import Image

    if pictures.shape[-1] != size:
        pictures = F.interpolate(pictures, (size, size), mode="bilinear", align_corners=True)
    arrays = ((pictures.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arrays]


def scored(images, scenes) -> dict:
    from diffexplain.data.checker import score, summarise

    return summarise([score(img, scene) for img, scene in zip(images, scenes, strict=True)])


def percent(summary: dict) -> dict:
    return {k: round(100 * v, 1) for k, v in summary.items() if k != "n"} | {"n": summary["n"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "folder", nargs="?", default="default", help="a cascade folder (default: the shipped one)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run (CI), no figures to quote: see the text above"
    )
    parser.add_argument("--compare", action="store_true", help="measure the latent default model too")
    parser.add_argument("--plain-seed", type=int, default=PLAIN_SEED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=["one", "two", "stage1", "speed"])
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--record", action="store_true", help="store the figures in the folder's model.json")
    parser.add_argument("--II-steps", dest="sr_steps", type=int, default=None)
    parser.add_argument("--II-guidance", dest="sr_guidance", type=float, default=None)
    parser.add_argument("--noise-level", type=int, default=None)
    parser.add_argument("--I-steps", dest="base_steps", type=int, default=None)
    parser.add_argument("--I-guidance", dest="base_guidance", type=float, default=None)
    args = parser.parse_args()
    if args.quick:  # the quick sizes stand in for the defaults; options given on the command line win
        if args.record:
            parser.error("--record stores the figures in the model folder: not with --quick")
        args = parser.parse_args(namespace=argparse.Namespace(**QUICK))
    torch.set_num_threads(args.threads)

    from diffexplain.data.scenes import caption
    from diffexplain.models.pixel_cascade import cascade_folder, pixel_cascade_pipelines, read_cascade_json

    folder = cascade_folder(args.folder)
    meta = read_cascade_json(folder)
    settings = {name: dict(meta["stages"][name]["defaults"]) for name in ("I", "II")}
    for stage, key, value in (
        ("I", "num_inference_steps", args.base_steps),
        ("I", "guidance_scale", args.base_guidance),
        ("II", "num_inference_steps", args.sr_steps),
        ("II", "guidance_scale", args.sr_guidance),
        ("II", "noise_level", args.noise_level),
    ):
        if value is not None:
            settings[stage][key] = value
    stages = pixel_cascade_pipelines(folder)
    one, two = plain_prompt_mix(args.quick, args.plain_seed)
    seeds = random.Random(args.plain_seed + 1).sample(range(10**6), len(one) + len(two))
    results: dict = {
        "folder": str(folder),
        "settings": settings,
        "threads": args.threads,
        "plain_seed": args.plain_seed,
        "quick": args.quick,
    }
    results["parameters"] = {
        "stage_I": sum(p.numel() for p in stages[0].unet.parameters()),
        "stage_II": sum(p.numel() for p in stages[1].unet.parameters()),
    }
    results["weights_mb"] = round(
        sum((folder / f"stage_{n}.safetensors").stat().st_size for n in ("I", "II")) / 1e6, 2
    )
    latent = build_pipeline("diffexplain/models/default") if args.compare else None
    if latent is not None:
        from bench_model import generate, model_settings

        latent_settings = model_settings("diffexplain/models/default")
        if args.quick:
            latent_settings["steps"] = QUICK["base_steps"]
        results["latent_parameters"] = sum(p.numel() for p in latent.unet.parameters()) + sum(
            p.numel() for p in latent.vae.parameters()
        )
    for section, scenes, offset in (("one", one, 0), ("two", two, len(one))):
        if section in args.skip:
            continue
        prompts = [caption(s) for s in scenes]
        section_seeds = seeds[offset : offset + len(scenes)]
        t0 = time.perf_counter()
        pictures = cascade_images(stages, prompts, section_seeds, settings)
        results[f"{section}_object"] = percent(scored(to_pil(pictures), scenes)) | {
            "seconds": round(time.perf_counter() - t0, 1)
        }
        if section == "one" and "stage1" not in args.skip:
            low = cascade_images(stages, prompts, section_seeds, settings, stage_one_only=True)
            results["one_object_stage_I"] = percent(scored(to_pil(low), scenes))
        if latent is not None:
            images = generate(latent, prompts, section_seeds, latent_settings, batch=10)
            results[f"latent_{section}_object"] = percent(scored(images, scenes))
        print(f"{section}: {json.dumps({k: v for k, v in results.items() if section in k})}", flush=True)
    if "speed" not in args.skip:
        times = []
        for k in range(2 if args.quick else 4):  # the first is a warm-up
            t0 = time.perf_counter()
            cascade_images(stages, ["a red circle on the left"], [k], settings, batch=1)
            times.append(time.perf_counter() - t0)
        results["image_s"] = round(statistics.median(times[1:]), 3)
        if latent is not None:
            latent_times = []
            for k in range(2 if args.quick else 4):
                t0 = time.perf_counter()
                generate(latent, ["a red circle on the left"], [k], latent_settings)
                latent_times.append(time.perf_counter() - t0)
            results["latent_image_s"] = round(statistics.median(latent_times[1:]), 3)
    verdicts = []
    if "one_object" in results:
        for key, goal in GOALS.items():
            value = results["one_object"][key]
            verdicts.append(
                f"one-object {key} {value} % (goal ≥ {goal}): {'PASS' if value >= goal else 'FAIL'}"
            )
    if "image_s" in results:
        ok = results["image_s"] <= MAX_SECONDS
        verdicts.append(
            f"{results['image_s']} s a picture (goal ≤ {MAX_SECONDS}): {'PASS' if ok else 'FAIL'}"
        )
    print(json.dumps(results, indent=1))
    print("\n".join(verdicts))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.record:
        meta["measured"] = {k: v for k, v in results.items() if k != "folder"} | {
            "command": "python benchmarks/bench_cascade.py " + " ".join(sys.argv[1:])
        }
        (folder / "model.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
