"""Does the caption or the starting noise decide where an object goes? (a script, not a test)

For each colour and shape, and each seed, it draws the same starting noise twice: once with the
caption "... on the left" and once with "... on the right" (and the same for top and bottom). The
attribute checker reads where each picture's object landed. Each pair is one of:

- ``follows the caption``: both objects where their captions say;
- ``same place``: both pictures put the object in the same place, so the noise decided, not the words;
- ``other``: anything else (an object missing, in the centre, or one right and one elsewhere).

A model that has learned the position words has ``follows the caption`` near 100 %. It also prints
position accuracy per word, over the same pictures.

Then, for two-object scenes (``--pairs`` dataset scenes, as in bench_model.py), it asks whether the
mistakes are mistakes of *binding*: each picture is scored against its scene and against the scene
with the two objects' colours, shapes, or both exchanged. ``objects swapped`` means the picture is right
for the scene with the two objects' places exchanged: every word drawn, bound to the wrong place.
Of the rest, ``one colour on both`` counts pictures whose two objects share one of the caption's
colours (the colour leaked), ``a colour not asked for`` those with a colour the caption does not name.

Last, the same-noise test for binding: each of those scenes again, from the same starting noise, with
the two objects' words exchanged. ``same picture`` counts pairs where both pictures are right for the
same caption: the noise, not the word order, chose which object went where.

    python benchmarks/bench_position.py [FOLDER] [--seeds 2] [--pairs 72] [--json out.json]

``--quick`` (what CI runs, to catch a crash; its figures mean nothing): 2 colour-and-shape combinations,
one seed, 2 two-object scenes, 2 sampling steps.
"""

from __future__ import annotations

import collections
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_model import build_pipeline, generate, model_parser, model_settings, parse_with_quick  # noqa: E402

OPPOSITES = (("left", "right"), ("top", "bottom"))
QUICK = {"combinations": 2, "seeds": 1, "pairs": 2, "steps": 2}


def measure(
    folder: str, pipe, settings: dict, seeds: int, batch: int = 18, combinations: int | None = None
) -> dict:
    """Pair outcomes per pair of opposite words, and position accuracy per word (over the first
    ``combinations`` colour-and-shape combinations, default all)."""
    from diffexplain.data.checker import score
    from diffexplain.data.scenes import Scene, SceneObject, caption
    from diffexplain.data.vocab import COLOURS, SHAPES

    outcomes: dict[str, collections.Counter] = {}
    per_word: dict[str, list[bool]] = collections.defaultdict(list)
    for first, second in OPPOSITES:
        pairs = [(c, s) for c in COLOURS for s in SHAPES][:combinations]
        combos = [(c, s, k) for c, s in pairs for k in range(seeds)]
        seed_list = [k * 1000 + i for i, (_c, _s, k) in enumerate(combos)]
        found = {}
        for word in (first, second):
            scenes = [Scene((SceneObject(c, s, word, "large"),), "light") for c, s, _k in combos]
            images = generate(pipe, [caption(x) for x in scenes], seed_list, settings, batch=batch)
            places = []
            for image, scene in zip(images, scenes, strict=True):
                obj = score(image, scene).objects[0]
                per_word[word].append(obj.position)
                places.append(obj.found.position if obj.found else None)
            found[word] = places
        counts = collections.Counter()
        for a, b in zip(found[first], found[second], strict=True):
            if (a, b) == (first, second):
                counts["follows the caption"] += 1
            elif a is not None and a == b:
                counts["same place"] += 1
            else:
                counts["other"] += 1
        outcomes[f"{first}/{second}"] = counts
    return {
        "folder": folder,
        "seeds": seeds,
        "settings": settings,
        "pairs": {
            k: {name: v[name] / sum(v.values()) for name in v} | {"n": sum(v.values())}
            for k, v in outcomes.items()
        },
        "position_right_per_word": {w: sum(v) / len(v) for w, v in per_word.items()},
    }


def exchanged(scene, *, colours: bool, shapes: bool):
    """``scene`` with its two objects' colours and/or shapes exchanged (places and sizes kept)."""
    import dataclasses

    a, b = scene.objects
    a2 = dataclasses.replace(
        a, colour=b.colour if colours else a.colour, shape=b.shape if shapes else a.shape
    )
    b2 = dataclasses.replace(
        b, colour=a.colour if colours else b.colour, shape=a.shape if shapes else b.shape
    )
    return dataclasses.replace(scene, objects=(a2, b2))


def measure_exchange(pipe, settings: dict, n: int, batch: int = 18) -> dict:
    """Same noise, the two objects' words exchanged: does the caption or the noise decide which goes where?

    For ``n`` two-object scenes, one picture of the scene and one, from the same starting noise, of the
    scene with its objects' colours and shapes exchanged ("a blue square on the left and a red circle
    on the right"). ``follows the caption``: each picture right for its own caption; ``same picture``:
    both right for the same one of the two captions, so the noise chose; ``other``: anything else.
    """
    from bench_model import prompt_mix

    from diffexplain.data.checker import detect_objects, score
    from diffexplain.data.scenes import caption

    scenes = prompt_mix(quick=False)[1][:n]
    swapped = [exchanged(x, colours=True, shapes=True) for x in scenes]
    seeds = list(range(n))
    first = generate(pipe, [caption(x) for x in scenes], seeds, settings, batch=batch)
    second = generate(pipe, [caption(x) for x in swapped], seeds, settings, batch=batch)
    counts: collections.Counter = collections.Counter()
    for image_a, image_b, scene_a, scene_b in zip(first, second, scenes, swapped, strict=True):
        found_a, found_b = detect_objects(image_a, n_objects=2), detect_objects(image_b, n_objects=2)
        a_is = [score(image_a, x, detected=found_a).all_right for x in (scene_a, scene_b)]
        b_is = [score(image_b, x, detected=found_b).all_right for x in (scene_a, scene_b)]
        if a_is[0] and b_is[1]:
            counts["follows the caption"] += 1
        elif (a_is[0] and b_is[0]) or (a_is[1] and b_is[1]):
            counts["same picture"] += 1
        else:
            counts["other"] += 1
    return {name: counts[name] / n for name in ("follows the caption", "same picture", "other")} | {"n": n}


def measure_binding(pipe, settings: dict, n: int, batch: int = 18) -> dict:
    """Outcome shares over ``n`` two-object dataset scenes: right, exchanged attributes, or other."""
    from bench_model import prompt_mix

    from diffexplain.data.checker import detect_objects, score
    from diffexplain.data.scenes import caption

    scenes = prompt_mix(quick=False)[1][:n]
    images = generate(pipe, [caption(x) for x in scenes], list(range(n)), settings, batch=batch)
    counts: collections.Counter = collections.Counter()
    for image, scene in zip(images, scenes, strict=True):
        found = detect_objects(image, n_objects=2)
        for name, variant in (
            ("both right", scene),
            ("objects swapped", exchanged(scene, colours=True, shapes=True)),
            ("colours swapped", exchanged(scene, colours=True, shapes=False)),
            ("shapes swapped", exchanged(scene, colours=False, shapes=True)),
        ):
            if score(image, variant, detected=found).all_right:
                counts[name] += 1
                break
        else:
            wanted = {o.colour for o in scene.objects}
            drawn = {d.colour for d in found}
            if len(found) == 2 and len(drawn) == 1 and drawn <= wanted:
                counts["one colour on both"] += 1  # a caption colour leaked onto the other object
            elif drawn - wanted:
                counts["a colour not asked for"] += 1
            else:
                counts["other"] += 1
    return {name: counts[name] / n for name in counts} | {"n": n}


def main(argv: list[str] | None = None) -> dict:
    parser = model_parser(__doc__)
    parser.add_argument("--seeds", type=int, default=2, help="seeds per colour and shape (default 2)")
    parser.add_argument("--pairs", type=int, default=72, help="two-object scenes for binding (default 72)")
    parser.add_argument(
        "--combinations", type=int, default=None, help="colour-and-shape combinations (default all 18)"
    )
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    args = parse_with_quick(parser, argv, QUICK)
    warnings.filterwarnings("ignore", category=FutureWarning)
    pipe, settings = build_pipeline(args.folder), model_settings(args.folder)
    settings["steps"] = args.steps or settings["steps"]
    r = measure(args.folder, pipe, settings, args.seeds, combinations=args.combinations)
    r["two_objects"] = measure_binding(pipe, settings, args.pairs) if args.pairs else {}
    r["exchanged_words"] = measure_exchange(pipe, settings, args.pairs) if args.pairs else {}
    s = r["settings"]
    print(f"model {args.folder}: {s['scheduler']}, {s['steps']} steps, guidance {s['guidance_scale']:g}")
    for pair, shares in r["pairs"].items():
        text = ", ".join(f"{k} {100 * v:.0f} %" for k, v in shares.items() if k != "n")
        print(f"  {pair:<13} ({shares['n']} pairs): {text}")
    print(
        "  position right per word: "
        + ", ".join(f"{w} {100 * v:.0f} %" for w, v in r["position_right_per_word"].items())
    )
    if r["two_objects"]:
        shares = r["two_objects"]
        text = ", ".join(f"{k} {100 * v:.0f} %" for k, v in shares.items() if k != "n")
        print(f"  two objects   ({shares['n']} scenes): {text}")
        shares = r["exchanged_words"]
        text = ", ".join(f"{k} {100 * v:.0f} %" for k, v in shares.items() if k != "n")
        print(f"  same noise, objects' words exchanged ({shares['n']} pairs): {text}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return r


if __name__ == "__main__":
    main()
