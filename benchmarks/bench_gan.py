"""The GAN against the diffusion model on the same one-object modes (a script, not a test).

A *mode* is one of the 90 combinations colour × shape × position (6 × 3 × 5) of the shapes dataset's
one-object pictures. Each picture is read by the attribute checker (diffexplain/data/checker.py): it is a
*clean single object* when the checker finds exactly one object, and its mode is that object's colour,
shape and position. For each source, over ``--n`` pictures (default 900, ten per mode):

- ``single_share``: the share of clean single-object pictures;
- ``modes_covered``: how many of the 90 modes appear at least once among them, and ``modes_in_first_k``:
  among each source's first k clean single objects, k being the fewest any source has (coverage grows
  with the count, so this one compares sources on equal footing);
- ``mode_entropy_bits``: Shannon entropy of their mode histogram (log2 90 = 6.49 bits when uniform) and
  ``effective_modes`` = 2^entropy; ``top_mode_share``: the most frequent mode's share of them;
- ``pixel_distance``: mean distance between two pictures of the source (RMS over pixels in [0, 1], every
  picture first averaged down to 32×32 so sizes compare; all pairs): a diversity measure that also sees size, background and anything the checker does not read;
- ``dark_share``: the share of pictures on a dark background (the dataset draws half dark, half light).

Sources: ``real`` (held-out one-object dataset pictures at the GAN's size and at 64 px, the reference;
also the checker's accuracy against their true scenes, which must be 100 %), ``gan`` (the shipped GAN, or ``--gan FOLDER``) and ``diffusion`` (the shipped default
model with the empty prompt: unconditional sampling at its default 25 steps, guidance off since the
conditional and unconditional prompts are the same ""; it was trained on one- and two-object scenes, so
its ``single_share`` counts only the single-object draws). The diffusion pictures are cached in
``--cache`` (safetensors) so a rerun only redoes the cheap parts.

    python benchmarks/bench_gan.py [--n 900] [--json out.json] [--grid grid.png] [--record]

``--quick`` is a smoke run (what CI runs, to catch a crash; its figures mean nothing): 4 pictures per
source, the diffusion model at 2 steps, its cache in a temporary folder (unless ``--cache``, so the real
cache keeps its 25-step pictures); ``--record`` is refused with it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import DEFAULT_FOLDER, build_pipeline, generate, model_settings  # noqa: E402

from diffexplain.data.checker import as_rgb, detect_objects, score  # noqa: E402
from diffexplain.data.dataset import HELD_OUT_SEED, ShapesDataset  # noqa: E402
from diffexplain.data.vocab import COLOURS, POSITIONS, SHAPES  # noqa: E402

N_MODES = len(COLOURS) * len(SHAPES) * len(POSITIONS)  # 90
QUICK = {"n": 4, "steps": 2}


def read_modes(pictures: list[np.ndarray]) -> list[tuple[str, str, str] | None]:
    """Each picture's mode (colour, shape, position) if the checker finds exactly one object, else None."""
    modes = []
    for picture in pictures:
        found = detect_objects(picture)
        modes.append((found[0].colour, found[0].shape, found[0].position) if len(found) == 1 else None)
    return modes


def pixel_distance(pictures: list[np.ndarray], max_pairs_of: int = 900, side: int = 32) -> float:
    """Mean RMS distance between two different pictures (all pairs of the first ``max_pairs_of``), each
    first averaged down to ``side`` × ``side`` so that sources of different sizes compare."""
    small = [_shrink(p, side) for p in pictures[:max_pairs_of]]
    flat = torch.from_numpy(np.stack([p.reshape(-1) for p in small]).astype(np.float64))
    d = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])  # [n, n] RMS distances
    n = flat.shape[0]
    return float(d.sum() / (n * (n - 1)))


def _shrink(picture: np.ndarray, side: int) -> np.ndarray:
    """[H, W, 3] averaged down to [side, side, 3] (H a multiple of side)."""
    k = picture.shape[0] // side
    return picture.reshape(side, k, side, k, 3).mean(axis=(1, 3))


def dark_share(pictures: list[np.ndarray]) -> float:
    """Share of pictures whose background (the median of the grey pixels) is darker than mid-grey."""
    dark = 0
    for p in pictures:
        chroma = p.max(-1) - p.min(-1)
        grey = p.mean(-1)[chroma < 0.25]
        dark += bool(grey.size) and float(np.median(grey)) < 0.5
    return dark / len(pictures)


def summarise(name: str, pictures: list[np.ndarray], seconds: float) -> dict:
    """The figures of one source (see the module docstring)."""
    modes = read_modes(pictures)
    singles = [m for m in modes if m is not None]
    counts = Counter(singles)
    total = max(1, len(singles))
    entropy = -sum(c / total * math.log2(c / total) for c in counts.values())
    return {
        "source": name,
        "n": len(pictures),
        "single_share": len(singles) / len(pictures),
        "modes_covered": len(counts),
        "mode_entropy_bits": entropy,
        "effective_modes": 2**entropy,
        "top_mode_share": max(counts.values()) / total if counts else 0.0,
        "colours": len({m[0] for m in singles}),
        "shapes": len({m[1] for m in singles}),
        "positions": len({m[2] for m in singles}),
        "pixel_distance": pixel_distance(pictures),
        "dark_share": dark_share(pictures),
        "seconds_per_picture": seconds / len(pictures),
        "mode_counts": {"/".join(m): c for m, c in sorted(counts.items())},
        "_singles": singles,  # in drawing order, for modes_in_first (dropped from the JSON)
    }


def modes_in_first(rows: list[dict]) -> int:
    """Add ``modes_in_first_k`` to each row: modes among its first k clean singles, k the fewest any row has.

    Coverage grows with the number of pictures, so this compares sources on equal counts of singles.
    """
    k = min(len(row["_singles"]) for row in rows)
    for row in rows:
        row["equal_singles_k"] = k
        row["modes_in_first_k"] = len(set(row.pop("_singles")[:k]))
    return k


def real_pictures(n: int, size: int) -> tuple[list[np.ndarray], float]:
    """``n`` held-out one-object dataset pictures of ``size`` px, and the checker's accuracy on their scenes."""
    ds = ShapesDataset(seed=HELD_OUT_SEED, length=n, size=size, two_object_share=0.0)
    items = [ds[i] for i in range(n)]
    accuracy = sum(score(it.pixels, it.scene).all_right for it in items) / n
    return [as_rgb(it.pixels) for it in items], accuracy


def gan_pictures(n: int, seed: int, folder: str | None) -> list[np.ndarray]:
    """``n`` pictures of the GAN (seed ``seed``)."""
    from diffexplain.models.gan import load_gan

    gan = load_gan(folder)
    return [np.asarray(im, dtype=np.float32) / 255.0 for im in gan.sample(n, seed=seed)]


def diffusion_pictures(
    n: int, seed: int, cache: Path, batch: int, steps: int | None = None
) -> list[np.ndarray]:
    """``n`` empty-prompt pictures of the default model (seeds seed..seed+n−1) at ``steps`` (default: the
    model's), cached in ``cache`` (under a key of their own where ``steps`` is given)."""
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    from diffexplain.safetensors_file import save_readable

    key = f"seed{seed}" if steps is None else f"seed{seed}_steps{steps}"
    cached = load_file(str(cache)).get(key) if cache.is_file() else None
    have = [] if cached is None else list(cached.float().numpy() / 255.0)
    if len(have) >= n:
        return have[:n]
    pipe = build_pipeline(DEFAULT_FOLDER)
    settings = model_settings(DEFAULT_FOLDER) | {"guidance_scale": 1.0}  # "" vs "": guidance changes nothing
    settings["steps"] = steps or settings["steps"]
    for start in tqdm(range(len(have), n, batch), desc="diffusion ''"):
        seeds = list(range(seed + start, seed + min(n, start + batch)))
        have.extend(generate(pipe, [""] * len(seeds), seeds, settings, batch=batch))
        cache.parent.mkdir(parents=True, exist_ok=True)
        stacked = torch.from_numpy(np.ascontiguousarray((np.stack(have) * 255).round().astype(np.uint8)))
        save_readable({key: stacked.contiguous()}, cache)  # after each batch: an interrupted run resumes
    return have[:n]


def grid(rows: dict[str, list[np.ndarray]], k: int = 12, side: int = 64):
    """One row of ``k`` pictures per source, each shown at ``side`` px, as a PIL image."""
    from PIL import Image

    def cell(p: np.ndarray) -> np.ndarray:
        image = Image.fromarray((p * 255).round().astype(np.uint8))
        return np.asarray(image.resize((side, side), Image.Resampling.NEAREST))

    lines = [np.concatenate([cell(p) for p in pics[:k]], axis=1) for pics in rows.values()]
    return Image.fromarray(np.concatenate(lines, axis=0))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=900, help="pictures per source (default 900, ten per mode)")
    parser.add_argument(
        "--seed", type=int, default=0, help="the GAN's sample seed and the first diffusion seed"
    )
    parser.add_argument("--gan", default=None, help="a GAN folder (default: the shipped weights)")
    parser.add_argument("--skip-diffusion", action="store_true", help="only the real pictures and the GAN")
    parser.add_argument("--batch", type=int, default=8, help="diffusion pictures per pipeline call")
    parser.add_argument(
        "--cache", default=None, help="diffusion picture cache (default runs/bench_gan/diffusion.safetensors)"
    )
    parser.add_argument("--steps", type=int, default=None, help="diffusion steps (default: the model's)")
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    parser.add_argument("--grid", default=None, help="write a PNG with a row of pictures per source")
    parser.add_argument(
        "--record",
        action="store_true",
        help="also write the figures into the GAN folder's gan.json under 'measured' (what notebook 10 shows)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run (CI), no figures to quote: see the text above"
    )
    args = parser.parse_args()
    if args.quick:  # the quick sizes stand in for the defaults; options given on the command line win
        if args.record:
            parser.error("--record stores the figures in the GAN folder: not with --quick")
        args = parser.parse_args(namespace=argparse.Namespace(**QUICK))
    if args.cache is None:  # a quick run's few-step pictures must not mix with the real cache's
        scratch = tempfile.TemporaryDirectory() if args.quick else None
        folder = Path(scratch.name) if scratch else Path("runs/bench_gan")
        args.cache = str(folder / "diffusion.safetensors")
    if args.n < 2:
        parser.error(f"--n must be at least 2, got {args.n}")
    rows, pictures = [], {}
    t = time.perf_counter()
    pictures["gan"] = gan_pictures(args.n, args.seed, args.gan)
    gan_seconds = time.perf_counter() - t
    checker = {}
    for size in sorted({pictures["gan"][0].shape[0], 64}):  # the real pictures at the GAN's size and at 64
        t = time.perf_counter()
        pictures[f"real {size}"], checker[size] = real_pictures(args.n, size)
        row = summarise(f"real {size}px", pictures[f"real {size}"], time.perf_counter() - t)
        rows.append(row | {"checker": checker[size]})
    rows.append(summarise(f"gan {pictures['gan'][0].shape[0]}px", pictures["gan"], gan_seconds))
    if not args.skip_diffusion:
        t = time.perf_counter()
        pictures["diffusion"] = diffusion_pictures(
            args.n, args.seed, Path(args.cache), args.batch, args.steps
        )
        rows.append(summarise("diffusion '' 64px", pictures["diffusion"], time.perf_counter() - t))
    k = modes_in_first(rows)
    cols = ["single_share", "modes_covered", "modes_in_first_k", "mode_entropy_bits", "effective_modes", "top_mode_share",
            "pixel_distance", "dark_share", "seconds_per_picture"]  # fmt: skip
    print(f"{'source':<18}" + "".join(f"{c:>20}" for c in cols))
    for row in rows:
        cells = (f"{row[c]:>20.3f}" if isinstance(row[c], float) else f"{row[c]:>20}" for c in cols)
        print(f"{row['source']:<18}" + "".join(cells))
    print(f"modes_in_first_k: modes among each source's first {k} clean single objects (the fewest any has)")
    for size, accuracy in checker.items():
        print(f"checker on {args.n} real one-object pictures at {size} px: {accuracy:.1%} all right")
    figures = {"n": args.n, "seed": args.seed, "command": " ".join(["python", *sys.argv]), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    if args.record:
        from diffexplain.models.gan import GAN_WEIGHTS_DIR

        meta_path = Path(args.gan or GAN_WEIGHTS_DIR) / "gan.json"
        meta = json.loads(meta_path.read_text())
        meta["measured"] = figures
        meta_path.write_text(json.dumps(meta, indent=1))
    if args.grid:  # the real pictures first, then the GAN's, then the diffusion model's
        grid(dict(sorted(pictures.items(), key=lambda kv: not kv[0].startswith("real")))).save(args.grid)


if __name__ == "__main__":
    main()
