"""Draw images with their captions as one PNG, so a person can look at samples at a glance.

As a script it draws dataset items (what the model was trained to draw), for comparison::

    python benchmarks/sample_grid.py --out /tmp/dataset.png --n 24 --seed 0

``--quick`` (what CI runs, to catch a crash): 6 items.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

QUICK = {"n": 6}


def make_grid(
    images: Sequence[np.ndarray | Image.Image | None],
    captions: Sequence[str],
    marks: Sequence[bool | None] | None = None,
    *,
    cell: int = 128,
    columns: int = 6,
) -> Image.Image:
    """A white sheet of ``cell``-pixel tiles, each image above its wrapped caption.

    ``images`` are PIL images, uint8 arrays [H, W, 3] or float arrays [H, W, 3] in [0, 1]. ``marks``
    (True / False / None per image) draws a green or red border: scored right or wrong. A ``None``
    image leaves its tile empty (to start a new row).
    """
    font = ImageFont.load_default()
    chars = max(8, cell // 6)
    lines = [textwrap.wrap(c, chars)[:5] for c in captions]
    text_h = 11 * max((len(x) for x in lines), default=1) + 4
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (cell + 8), rows * (cell + 8 + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, image in enumerate(images):
        if image is None:
            continue
        if not isinstance(image, Image.Image):
            arr = np.asarray(image)
            if arr.dtype != np.uint8:
                arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
            image = Image.fromarray(arr)
        x, y = (k % columns) * (cell + 8) + 4, (k // columns) * (cell + 8 + text_h) + 4
        mark = marks[k] if marks is not None else None
        if mark is not None:
            draw.rectangle([x - 3, y - 3, x + cell + 2, y + cell + 2], fill="#2a2" if mark else "#d22")
        sheet.paste(image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        for j, line in enumerate(lines[k]):
            draw.text((x, y + cell + 4 + 11 * j), line, fill="black", font=font)
    return sheet


def comparison_grid(samples: dict, per_group: int = 12, columns: int = 6) -> Image.Image:
    """Rows of guided samples, each above the same prompts and seeds without guidance.

    ``samples[name]`` (name: "guided", "unguided") is ``(images, prompts, all_right flags,
    number of one-object prompts)``, as ``bench_model.py`` collects them; ``per_group`` one-object
    and two-object samples are shown.
    """
    n_one = samples["guided"][3]
    n_all = len(samples["guided"][0])
    picks = list(range(0, n_one, max(1, n_one // per_group)))[:per_group]
    picks += list(range(n_one, n_all))[:per_group]
    images, captions, marks = [], [], []
    for row in range(0, len(picks), columns):
        chunk = picks[row : row + columns]
        pad = columns - len(chunk)
        for name, label in (("guided", ""), ("unguided", "[no CFG] ")):
            imgs, prompts, rights, _ = samples[name]
            images += [imgs[i] for i in chunk] + [None] * pad
            captions += [label + prompts[i] for i in chunk] + [""] * pad
            marks += [rights[i] for i in chunk] + [None] * pad
    return make_grid(images, captions, marks, columns=columns)


def main(argv: list[str] | None = None) -> None:
    """Save a grid of dataset items."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="dataset_grid.png")
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run (CI), no figures to quote: see the text above"
    )
    args = parser.parse_args(argv)
    if args.quick:  # the quick sizes stand in for the defaults; options given on the command line win
        args = parser.parse_args(argv, argparse.Namespace(**QUICK))
    from diffexplain.data import ShapesDataset

    ds = ShapesDataset(seed=args.seed, size=args.size)
    items = [ds[i] for i in range(args.n)]
    images = [((it.pixels.transpose(1, 2, 0) + 1) / 2) for it in items]
    make_grid(images, [it.caption for it in items]).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
