"""Measure a model folder against diffexplain's quality bar (a script, not a test).

Sections (``--skip`` any of them): ``vae`` reconstruction PSNR on held-out images; ``checker``
accuracy on real dataset images (must be 100%); ``generation`` with and without classifier-free
guidance on the dataset's own captions, scored by the attribute checker; ``plain`` the same on plain
captions as users write them (no size or background words), freshly drawn from ``--plain-seed``; ``speed`` of one image, warm; ``cold`` start in a fresh
process. Generation uses a plain diffusers ``StableDiffusionPipeline`` built from the folder's parts.

    python benchmarks/bench_model.py [FOLDER] [--quick] [--json out.json] [--grid samples.png]

``--quick`` is a smoke run (what CI runs, to catch a crash; its figures mean nothing): every section
once at the smallest size, 2 sampling steps (unless ``--steps``), 4 VAE pictures, 10 checker pictures,
3 one-object and 2 two-object prompts per generation section, 1 timed picture after the warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

DEFAULT_FOLDER = "diffexplain/models/default"
QUICK_STEPS = 2  # --quick's sampling steps, unless --steps says otherwise
SECTIONS = ("vae", "checker", "generation", "plain", "speed", "cold")
GOALS = {  # key: (comparison, target, unit)
    "psnr_db": (">=", 32.0, " dB"),
    "checker": (">=", 100.0, "%"),
    "one_object_colour": (">=", 98.0, "%"),  # guided, at the model's default scale and steps
    "one_object_shape": (">=", 95.0, "%"),
    "one_object_position": (">=", 97.0, "%"),
    "two_object_all_right": (">=", 80.0, "%"),
    "guidance_gain_points": (">=", 10.0, " pts"),
    "image_s": ("<=", 1.5, " s"),
    "cold_start_s": ("<=", 15.0, " s"),
}


def model_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's argument parser with the model ``folder`` and ``--json``; each script adds its own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "folder", nargs="?", default=DEFAULT_FOLDER, help=f"model folder (default {DEFAULT_FOLDER})"
    )
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    return parser


def parse_with_quick(
    parser: argparse.ArgumentParser, argv: list[str] | None, quick: dict
) -> argparse.Namespace:
    """Add ``--quick`` to ``parser`` and parse ``argv``. With ``--quick`` (a smoke run, what CI runs),
    ``quick``'s values (by option name, ``-`` as ``_``) stand in for the defaults; options given still win."""
    sizes = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in quick.items())
    parser.add_argument(
        "--quick", action="store_true", help=f"a smoke run (CI), no figures to quote: {sizes}"
    )
    args = parser.parse_args(argv)
    return parser.parse_args(argv, argparse.Namespace(**quick)) if args.quick else args


def model_settings(folder: str) -> dict:
    """Image size, scheduler class, and default guidance scale and steps from ``model.json``'s
    ``defaults`` (else its ``recipe``; else 5.0 and 25)."""
    from diffexplain.models.store import read_model_json

    meta = read_model_json(folder)
    found = {**(meta.get("recipe") or {}), **(meta.get("defaults") or {})}  # "defaults" wins
    return {
        "image_size": int(meta["vae_config"].get("sample_size", 64)),
        "guidance_scale": float(found.get("guidance_scale", 5.0)),
        "steps": int(found.get("num_inference_steps", 25)),
        "scheduler": meta["scheduler"]["class"],
    }


def build_pipeline(folder: str, device: str = "cpu"):
    """A ``StableDiffusionPipeline`` from the folder's U-Net, VAE and scheduler, and MiniLM."""
    from transformers.utils import logging as transformers_logging

    # Importing the pipeline imports CLIP's and SigLIP's image processors, which warn that torchvision is
    # missing; the pipeline gets no feature extractor, so the warning is noise here.
    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        from diffusers import StableDiffusionPipeline
    finally:
        transformers_logging.set_verbosity(level)

    from diffexplain.models.store import load_model_parts
    from diffexplain.models.text import load_text_encoder

    parts = load_model_parts(folder, device=device)
    tokenizer, text_encoder = load_text_encoder(device)
    pipe = StableDiffusionPipeline(
        vae=parts["vae"],
        unet=parts["unet"],
        scheduler=parts["scheduler"],
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompts: list[str], seeds: list[int], settings: dict, *, scale=None, batch: int = 1):
    """Images [H, W, 3] in [0, 1], one per prompt; sample ``k`` starts from noise seeded ``seeds[k]``.

    Steps and size come from ``settings`` (:func:`model_settings`), so does the guidance ``scale``
    unless given.
    """
    import torch

    out = []
    for i in range(0, len(prompts), batch):
        result = pipe(
            prompts[i : i + batch],
            height=settings["image_size"],
            width=settings["image_size"],
            num_inference_steps=settings["steps"],
            guidance_scale=settings["guidance_scale"] if scale is None else scale,
            generator=[torch.Generator().manual_seed(s) for s in seeds[i : i + batch]],
            output_type="np",
        )
        out.extend(result.images)
    return out


def bench_vae(pipe, n: int, size: int) -> dict:
    """Reconstruction PSNR (posterior mean, images in [0, 1]) on ``n`` held-out images."""
    import torch

    from diffexplain.data import held_out

    ds = held_out(n, size=size)
    mse = []
    with torch.no_grad():
        for i in range(0, n, 64):
            x, _ = ds.batch(range(i, min(n, i + 64)))
            recon = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            mse.extend((((recon - x) / 2) ** 2).mean(dim=(1, 2, 3)).tolist())
    psnr = [10 * torch.log10(torch.tensor(1.0 / max(m, 1e-12))).item() for m in mse]
    pooled = 10 * torch.log10(torch.tensor(1.0 / max(statistics.fmean(mse), 1e-12))).item()
    return {
        "n": n,
        "psnr_pooled_db": pooled,
        "psnr_mean_db": statistics.fmean(psnr),
        "psnr_min_db": min(psnr),
    }


def bench_checker(n: int, size: int) -> dict:
    """The attribute checker's accuracy on ``n`` held-out dataset images."""
    from diffexplain.data import ShapesDataset
    from diffexplain.data.checker import score, summarise
    from diffexplain.data.dataset import HELD_OUT_SEED

    ds = ShapesDataset(seed=HELD_OUT_SEED, length=n, size=size)
    return summarise(score(ds[i].pixels, ds[i].scene) for i in range(n))


PLAIN_SEED = 20_261_202  # seeds the plain-caption draws; ``--plain-seed`` draws another set


def prompt_mix(quick: bool) -> tuple[list, list]:
    """Dataset captions: one-object scenes (every combination, several seeds each) and two-object scenes
    drawn as the training data draws them (background said half the time). ``quick``: 3 and 2."""
    import random

    from diffexplain.data.scenes import one_object_scenes, sample_scene

    combos = one_object_scenes()
    one = combos[::30] if quick else combos * 4  # 3 or 360 samples
    rng = random.Random(20_240_601)
    two = [sample_scene(rng, two_object_share=1.0) for _ in range(2 if quick else 210)]
    return one, two


def plain_prompt_mix(quick: bool, seed: int = PLAIN_SEED) -> tuple[list, list]:
    """Plain captions, as the README prompts: freshly drawn from ``seed``, with no size or background
    word ("a red circle on the left and a blue square on the right"). One object anywhere; two objects
    of two different colours, random shapes, left/right or top/bottom in either order. 300 and 200
    scenes; ``quick``: 3 and 2."""
    import random

    from diffexplain.data.scenes import Scene, SceneObject, sample_scene

    rng = random.Random(seed)
    one = []
    for _ in range(3 if quick else 300):
        drawn = sample_scene(rng, two_object_share=0.0).objects[0]
        obj = SceneObject(drawn.colour, drawn.shape, drawn.position, "large")
        one.append(Scene((obj,), "light", say_size=(False,)))  # size and background are left free
    two = []
    for _ in range(2 if quick else 200):
        drawn = sample_scene(rng, two_object_share=1.0)
        two.append(Scene(drawn.objects, drawn.background, say_size=(False, False)))
    return one, two


def bench_generation(
    pipe, settings: dict, quick: bool, batch: int, *, plain: bool = False, plain_seed: int = PLAIN_SEED
) -> tuple[dict, dict]:
    """Checker scores of generated images, guided and unguided; also the samples for the grid.

    ``plain``: the plain-caption mix (:func:`plain_prompt_mix`), with noise seeds drawn from
    ``plain_seed`` too; else the dataset-caption mix with seeds 0, 1, 2, ...
    """
    import random

    from diffexplain.data.checker import score, summarise
    from diffexplain.data.scenes import caption

    one, two = plain_prompt_mix(quick, plain_seed) if plain else prompt_mix(quick)
    scenes = one + two
    prompts = [caption(s) for s in scenes]
    if plain:
        seeds = random.Random(plain_seed + 1).sample(range(10**6), len(scenes))
    else:
        seeds = list(range(len(scenes)))
    results: dict = {}
    samples: dict = {}
    for name, scale in (("guided", settings["guidance_scale"]), ("unguided", 1.0)):
        t0, c0 = time.perf_counter(), time.process_time()
        images = generate(pipe, prompts, seeds, settings, scale=scale, batch=batch)
        scores = [score(img, scene) for img, scene in zip(images, scenes, strict=True)]
        results[name] = {
            "guidance_scale": scale,
            "one_object": summarise(scores[: len(one)]),
            "two_object": summarise(scores[len(one) :]),
            "all_right": summarise(scores)["all_right"],
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0,
        }
        samples[name] = (images, prompts, [s.all_right for s in scores], len(one))
    results["guidance_gain_points"] = 100 * (
        results["guided"]["all_right"] - results["unguided"]["all_right"]
    )
    return results, samples


def bench_speed(pipe, settings: dict, reps: int) -> dict:
    """Median seconds for one image at the default steps and guidance, batch 1, after a warm-up."""
    times, cpu = [], []
    for k in range(reps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        generate(pipe, ["a red circle on the left"], [k], settings)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "image_s": statistics.median(times[1:]),
        "image_cpu_s": statistics.median(cpu[1:]),  # process CPU time: all threads together
        "times_s": times[1:],
        "warmup_s": times[0],
    }


def bench_cold(folder: str, device: str, threads: int, steps: int) -> dict:
    """Import + load + first image in a fresh interpreter (wall time of the whole subprocess)."""
    t0 = time.perf_counter()
    options = ["--device", device, "--threads", str(threads), "--steps", str(steps)]
    child = subprocess.run(
        [sys.executable, __file__, folder, "--cold-child", *options], capture_output=True, text=True
    )
    if child.returncode:  # show why the child failed, not only that it did
        sys.stderr.write(child.stderr)
        raise SystemExit(f"bench_model: the cold-start process failed (exit {child.returncode})")
    total = time.perf_counter() - t0
    return {"cold_start_s": total, **json.loads(child.stdout.strip().splitlines()[-1])}


def cold_child(folder: str, device: str, threads: int | None, steps: int | None = None) -> None:
    """Run in the fresh process of :func:`bench_cold`; prints its phase timings as JSON."""
    t0 = time.perf_counter()
    import diffusers  # noqa: F401
    import torch

    if threads:
        torch.set_num_threads(threads)

    import diffexplain.models.store  # noqa: F401
    import diffexplain.models.text  # noqa: F401

    t1 = time.perf_counter()
    pipe, settings = build_pipeline(folder, device), model_settings(folder)
    settings["steps"] = steps or settings["steps"]
    t2 = time.perf_counter()
    generate(pipe, ["a blue square at the top"], [0], settings)
    t3 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_image_s": t3 - t2}))


def _goal(r: dict, key: str, value: float) -> tuple[str, str]:
    """The goal's text and PASS/FAIL for ``value``; also recorded in ``r["goals_met"]``."""
    op, target, unit = GOALS[key]
    ok = value >= target if op == ">=" else value <= target
    r.setdefault("goals_met", {})[key] = ok
    return f"{op} {target:g}{unit}", "PASS" if ok else "FAIL"


def _one_object_goals(r: dict, one_object: dict) -> tuple[str, str]:
    """The colour, shape and position goals in one cell; PASS only if all three are met."""
    marks = [_goal(r, f"one_object_{k}", 100 * one_object[k])[1] for k in ("colour", "shape", "position")]
    targets = "/".join(f"{GOALS[f'one_object_{k}'][1]:g}" for k in ("colour", "shape", "position"))
    return f">= {targets}%", "PASS" if all(m == "PASS" for m in marks) else "FAIL"


def _generation_rows(r: dict, section: str, label: str) -> list[tuple[str, str, tuple[str, str]]]:
    """The table rows of one generation section; its goals are recorded as ``"<section>.<goal>"``."""
    goals: dict = {}
    rows: list[tuple[str, str, tuple[str, str]]] = [(f"{label}:", "", ("", ""))]
    for name in ("guided", "unguided"):
        s = r[section][name]
        o, t = s["one_object"], s["two_object"]
        cells = " / ".join(f"{100 * o[k]:.1f}" for k in ("colour", "shape", "position", "all_right"))
        rows.append(
            (
                f"  [{name}, scale {s['guidance_scale']:g}] 1 object ({o['n']}): c/s/p/all",
                cells + "%",
                _one_object_goals(goals, o) if name == "guided" else ("", ""),
            )
        )
        two_goal = (
            _goal(goals, "two_object_all_right", 100 * t["all_right"]) if name == "guided" else ("", "")
        )
        rows.append((f"  [{name}] 2 objects both right ({t['n']})", f"{100 * t['all_right']:.1f}%", two_goal))
        rows.append((f"  [{name}] all right, whole mix", f"{100 * s['all_right']:.1f}%", ("", "")))
    gain = r[section]["guidance_gain_points"]
    rows.append(
        (
            "  guidance gain (guided - unguided)",
            f"{gain:+.1f} pts",
            _goal(goals, "guidance_gain_points", gain),
        )
    )
    for key, ok in goals["goals_met"].items():
        r.setdefault("goals_met", {})[f"{section}.{key}"] = ok
    return rows


def report(r: dict) -> None:
    """Print the figures as a table, with goals where there are goals."""
    rows: list[tuple[str, str, tuple[str, str]]] = []
    if "vae" in r:
        v = r["vae"]
        rows.append((f"VAE PSNR, pooled MSE ({v['n']} held-out)", f"{v['psnr_pooled_db']:.2f} dB",
                     _goal(r, "psnr_db", v["psnr_pooled_db"])))  # fmt: skip
        rows.append(
            ("  mean / min per image", f"{v['psnr_mean_db']:.2f} / {v['psnr_min_db']:.2f} dB", ("", ""))
        )
    if "checker" in r:
        c = r["checker"]
        rows.append((f"checker on real images ({c['n']})", f"{100 * c['all_right']:.2f}%",
                     _goal(r, "checker", 100 * c["all_right"])))  # fmt: skip
    for section, label in (("generation", "dataset captions"), ("plain", "plain captions")):
        if section in r:
            rows.extend(_generation_rows(r, section, label))
    if "speed" in r:
        sp = r["speed"]
        rows.append(
            (
                "one image, warm, batch 1 (median)",
                f"{sp['image_s']:.2f} s",
                _goal(r, "image_s", sp["image_s"]),
            )
        )
        rows.append(("  its CPU time (all threads)", f"{sp['image_cpu_s']:.2f} s", ("", "")))
    if "cold" in r:
        c = r["cold"]
        rows.append(("cold start: import + load + 1st image", f"{c['cold_start_s']:.1f} s",
                     _goal(r, "cold_start_s", c["cold_start_s"])))  # fmt: skip
        phases = " / ".join(f"{c[k]:.1f}" for k in ("import_s", "load_s", "first_image_s"))
        rows.append(("  import / load / first image", phases + " s", ("", "")))
    s, m = r["settings"], r["machine"]
    busy = "  BUSY: timings are pessimistic" if m["load_avg"][0] > m["cpus"] else ""
    busy += "  QUICK: a smoke run, the figures say nothing about the model" if r.get("quick") else ""
    print(f"\nmodel {r['model']}: {s['scheduler']}, {s['steps']} steps, guidance {s['guidance_scale']:g}, "
          f"{s['image_size']} px; {r['device']}, {m['cpus']} CPUs, {m['torch_threads']} torch threads, "
          f"load {m['load_avg'][0]:.1f}{busy}")  # fmt: skip
    width = max(len(x[0]) for x in rows) if rows else 0
    goal_width = max((len(x[2][0]) for x in rows), default=0)
    for name, value, (goal, mark) in rows:
        print(f"  {name:<{width}}  {value:>26}  {goal:>{goal_width}}  {mark}")
    print("  section seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in r["section_seconds"].items()))


def main(argv: list[str] | None = None) -> dict:
    """Parse arguments, run the sections, print the table; returns all figures."""
    parser = model_parser(__doc__)
    parser.add_argument(
        "--guidance-scale", type=float, default=None, help="default: model.json defaults, else 5.0"
    )
    parser.add_argument("--steps", type=int, default=None, help="default: model.json defaults, else 25")
    parser.add_argument("--batch", type=int, default=30, help="prompts per pipeline call (default 30)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run (CI), no figures to quote: see the text above"
    )
    parser.add_argument(
        "--plain-seed", type=int, default=PLAIN_SEED, help=f"draws the plain captions (default {PLAIN_SEED})"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections to leave out")
    parser.add_argument("--grid", default=None, help="save a PNG of samples with their captions")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cold-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # diffusers' scheduler-config notices
    if args.cold_child:
        cold_child(args.folder, args.device, args.threads, args.steps)
        return {}
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = model_settings(args.folder)
    settings["steps"] = args.steps or (QUICK_STEPS if args.quick else settings["steps"])
    if args.guidance_scale is not None:
        settings["guidance_scale"] = args.guidance_scale
    r: dict = {"model": args.folder, "device": args.device, "quick": args.quick, "settings": settings}
    r["machine"] = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg": os.getloadavg(),
    }
    r["section_seconds"] = timing = {}
    t0 = time.perf_counter()
    pipe = build_pipeline(args.folder, args.device)
    timing["load"] = time.perf_counter() - t0
    size = settings["image_size"]
    jobs = {
        "vae": lambda: bench_vae(pipe, 4 if args.quick else 256, size),
        "checker": lambda: bench_checker(10 if args.quick else 1000, size),
        "speed": lambda: bench_speed(pipe, settings, 1 if args.quick else 5),
        "cold": lambda: bench_cold(args.folder, args.device, torch.get_num_threads(), settings["steps"]),
    }
    for name in SECTIONS:
        if name in args.skip:
            continue
        t0 = time.perf_counter()
        if name in ("generation", "plain"):
            r[name], samples = bench_generation(
                pipe, settings, args.quick, args.batch, plain=name == "plain", plain_seed=args.plain_seed
            )
            if args.grid and name == "generation":
                sys.path.insert(0, str(Path(__file__).resolve().parent))
                from sample_grid import comparison_grid

                comparison_grid(samples).save(args.grid)
        else:
            r[name] = jobs[name]()
        timing[name] = time.perf_counter() - t0
        print(f"{name}: done in {timing[name]:.1f} s", file=sys.stderr, flush=True)
    report(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return r


if __name__ == "__main__":
    main()
