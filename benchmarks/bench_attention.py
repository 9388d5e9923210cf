"""Where does each cross-attention layer look for an object's colour and shape words? (a script, not a test)

For two-object scenes ("a red circle on the left and a blue square on the right"), it records every
cross-attention layer's attention probabilities, p[query pixel, caption token] (heads averaged, the
conditional half of the CFG batch), at a few denoising steps. For each object's colour word and shape
word it compares the attention that word gets from the half of the picture where the caption puts the
object with the attention from the other half:

    place share = mean p(own half) / (mean p(own half) + mean p(other half))

0.5 means the layer spreads that word over the whole picture (every pixel gets "red" alike, so red can
leak onto the other object); 1.0 means only the object's own half reads it. A layer that binds words
to places has shares well above 0.5; below 0.5, the word is read mostly where the *other* object goes.

A share near 0.5 on average can also come from a layer that does look for the word in one half, but in
the wrong half as often as in the right one. So it also prints how *local* each word's attention is,
whichever half it favours: ``local`` = mean |own − other| / (own + other), 0 for a word read alike
everywhere, 1 for a word read in one half only.

    python benchmarks/bench_attention.py [FOLDER] [--scenes 24] [--steps N] [--json out.json]

``--quick`` (what CI runs, to catch a crash; its figures mean nothing): one scene, 2 sampling steps.
"""

from __future__ import annotations

import collections
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_model import build_pipeline, generate, model_parser, model_settings, parse_with_quick  # noqa: E402

STEPS_RECORDED = (0.2, 0.5, 0.8)  # fractions of the way through sampling
QUICK = {"scenes": 1, "steps": 2}


def record_attention(pipe) -> dict[str, list]:
    """Make every cross-attention layer (``attn2``) keep its probabilities; returns the store it fills."""
    from diffusers.models.attention_processor import AttnProcessor

    store: dict[str, list] = collections.defaultdict(list)
    for name, module in pipe.unet.named_modules():
        if not name.endswith("attn2"):
            continue
        module.set_processor(AttnProcessor())  # the processor that calls get_attention_scores
        original = module.get_attention_scores

        def keep(query, key, attention_mask=None, _original=original, _name=name):
            probs = _original(query, key, attention_mask)  # [batch·heads, H·W, T]
            store[_name].append(probs.detach())
            return probs

        module.get_attention_scores = keep
    return store


def measure(pipe, settings: dict, n: int) -> dict:
    """Place shares per layer (colour and shape words), over ``n`` two-object scenes."""
    from bench_model import prompt_mix

    from diffexplain.data.scenes import caption
    from diffexplain.training.attention_loss import object_words

    store = record_attention(pipe)
    scenes = prompt_mix(quick=False)[1][:n]
    steps = settings["steps"]
    recorded = sorted({min(steps - 1, int(f * steps)) for f in STEPS_RECORDED})
    shares: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    sizes: dict[str, int] = {}
    for k, scene in enumerate(scenes):
        store.clear()
        text = caption(scene)
        generate(pipe, [text], [k], settings)
        tokens = pipe.tokenizer(text).input_ids
        # (object, kind, token index): object_words gives each object's colour, then shape word
        found = object_words(pipe.tokenizer, text)
        kinds = [(obj, kind) for obj in scene.objects for kind in ("colour", "shape")]
        words = [(obj, kind, index) for (obj, kind), (index, _) in zip(kinds, found, strict=True)]
        for layer, per_call in store.items():
            for step in recorded:
                probs = per_call[step]
                heads = probs.shape[0] // 2
                cond = probs[heads:].mean(0)[:, : len(tokens)]  # [H·W, tokens]; padding left out
                side = int(cond.shape[0] ** 0.5)
                sizes[layer] = side
                grid = cond.reshape(side, side, -1)
                for obj, kind, index in words:
                    own, other = halves(grid[..., index], obj.position)
                    shares[layer][kind].append(own / (own + other))
                    shares[layer][kind + "_local"].append(abs(own - other) / (own + other))
    return {
        layer: {
            "resolution": sizes[layer],
            "colour_place_share": sum(v["colour"]) / len(v["colour"]),
            "shape_place_share": sum(v["shape"]) / len(v["shape"]),
            "colour_local": sum(v["colour_local"]) / len(v["colour_local"]),
            "shape_local": sum(v["shape_local"]) / len(v["shape_local"]),
        }
        for layer, v in shares.items()
    } | {"_settings": {"scenes": n, "steps_recorded": recorded}}


def halves(attention, position: str) -> tuple[float, float]:
    """Mean attention [side, side] over the object's half of the picture and over the other half."""
    side = attention.shape[0]
    half = side // 2
    if position in ("left", "right"):
        left, right = float(attention[:, :half].mean()), float(attention[:, half:].mean())
        return (left, right) if position == "left" else (right, left)
    top, bottom = float(attention[:half].mean()), float(attention[half:].mean())
    return (top, bottom) if position == "top" else (bottom, top)


def main(argv: list[str] | None = None) -> dict:
    parser = model_parser(__doc__)
    parser.add_argument("--scenes", type=int, default=24, help="two-object scenes (default 24)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    args = parse_with_quick(parser, argv, QUICK)
    warnings.filterwarnings("ignore", category=FutureWarning)
    pipe, settings = build_pipeline(args.folder), model_settings(args.folder)
    settings["steps"] = args.steps or settings["steps"]
    r = measure(pipe, settings, args.scenes)
    print(f"model {args.folder}: {args.scenes} two-object scenes, steps {r['_settings']['steps_recorded']}")
    print(f"  {'':<32} {'place share':^15} {'local':^15}")
    print(f"  {'layer':<26} {'size':>5} {'colour':>7} {'shape':>7} {'colour':>7} {'shape':>7}")
    for layer, v in r.items():
        if layer.startswith("_"):
            continue
        print(
            f"  {layer.removesuffix('.transformer_blocks.0.attn2'):<26} {v['resolution']:>3}²"
            f"  {v['colour_place_share']:>7.2f} {v['shape_place_share']:>7.2f}"
            f" {v['colour_local']:>7.2f} {v['shape_local']:>7.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return r


if __name__ == "__main__":
    main()
