"""Does the text encoder say which colour goes where? Linear probes on MiniLM token states (a script).

In a two-object caption ("a red circle at the top and a blue square at the bottom") the U-Net can only
bind each colour to its place if the token states carry that pairing. This script encodes two-object
dataset captions exactly as the loop does and fits linear probes (logistic regression, 80 % of the
captions to fit, 20 % to score) that read it back:

- from the first colour word's state: is its object at the top / on the left? (chance 50 %)
- from the second colour word's state: is the *first* object at the top / on the left? (chance 50 %)
- from the state of the word "top" (or "left"): the colour of the object there (chance 1/6)

High accuracy means the pairing is in the text embeddings, so a model that still mixes colours up
fails in the U-Net's cross-attention, not in the text encoder.

    python benchmarks/bench_text_binding.py [--captions 3000]

``--quick`` (what CI runs, to catch a crash; its figures mean nothing): 40 captions, 20 probe steps.
"""

from __future__ import annotations

import argparse
import random

import torch

FIRST_PLACES = ("top", "left")
QUICK = {"captions": 40, "probe_steps": 20}


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, classes: int, steps: int = 500) -> float:
    """Held-out accuracy of a logistic-regression probe fitted on the first 80 % of the rows."""
    n = int(0.8 * len(features))
    mean, std = features[:n].mean(0), features[:n].std(0) + 1e-6
    x = (features - mean) / std
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=1e-2)
    for _ in range(steps):
        loss = (
            torch.nn.functional.cross_entropy(x[:n] @ weight + bias, labels[:n]) + 1e-3 * weight.pow(2).sum()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((x[n:] @ weight + bias).argmax(1) == labels[n:]).float().mean().item()


def measure(n_captions: int, probe_steps: int = 500) -> dict[str, float]:
    from diffexplain.data.scenes import caption, sample_scene
    from diffexplain.data.vocab import COLOURS
    from diffexplain.models.text import encode_captions, load_text_encoder

    torch.manual_seed(0)
    tokenizer, encoder = load_text_encoder()
    rng = random.Random(5)
    scenes = [sample_scene(rng, two_object_share=1.0) for _ in range(n_captions)]
    captions = [caption(s) for s in scenes]
    states = torch.cat(
        [encode_captions(tokenizer, encoder, captions[i : i + 250]) for i in range(0, n_captions, 250)]
    )
    colour_of = {tokenizer.convert_tokens_to_ids(c): c for c in COLOURS}
    colours = list(COLOURS)
    first, second, place, first_is_first_place, colour_at_place = [], [], [], [], []
    for k, (scene, text) in enumerate(zip(scenes, captions, strict=True)):
        ids = tokenizer(
            text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True
        ).input_ids
        where = [i for i, t in enumerate(ids) if t in colour_of]
        if len(where) != 2:  # two objects of the same colour never occur; skip anything unexpected
            continue
        first_object = next(o for o in scene.objects if o.colour == colour_of[ids[where[0]]])
        word = "top" if first_object.position in ("top", "bottom") else "left"
        first.append(states[k, where[0]])  # [384]
        second.append(states[k, where[1]])
        place.append(states[k, ids.index(tokenizer.convert_tokens_to_ids(word))])
        first_is_first_place.append(int(first_object.position in FIRST_PLACES))
        colour_at_place.append(colours.index(next(o for o in scene.objects if o.position == word).colour))
    labels = torch.tensor(first_is_first_place)
    return {
        "first colour word: its object at the top / left": probe_accuracy(
            torch.stack(first), labels, 2, probe_steps
        ),
        "second colour word: the first object at the top / left": probe_accuracy(
            torch.stack(second), labels, 2, probe_steps
        ),
        '"top" / "left": the colour of its object': probe_accuracy(
            torch.stack(place), torch.tensor(colour_at_place), len(colours), probe_steps
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--captions", type=int, default=3000, help="two-object captions (default 3000)")
    parser.add_argument("--probe-steps", type=int, default=500, help="Adam steps per probe (default 500)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run (CI), no figures to quote: see the text above"
    )
    args = parser.parse_args(argv)
    if args.quick:  # the quick sizes stand in for the defaults; options given on the command line win
        args = parser.parse_args(argv, argparse.Namespace(**QUICK))
    result = measure(args.captions, args.probe_steps)
    print(f"linear probes on MiniLM token states, {args.captions} two-object captions (20 % held out):")
    for name, accuracy in result.items():
        print(f"  {name:<58} {100 * accuracy:5.1f} %")
    return result


if __name__ == "__main__":
    main()
