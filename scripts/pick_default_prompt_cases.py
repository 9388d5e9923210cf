"""Pick the cases of tests/test_default_prompts.py for a model folder (run it whenever the weights change).

It runs each candidate prompt at seeds 0-2 exactly as the test does (``Explainer.run`` with the model's
default sampler, steps and guidance scale), scores every picture with the attribute checker, prints a
table, and prints a ``CASES`` list: for each prompt, the first seed the model draws fully right.

    python scripts/pick_default_prompt_cases.py [FOLDER]      # default: the shipped model
"""

from __future__ import annotations

import sys

CANDIDATES = [
    "a red circle on the left",
    "a blue square at the top",
    "a small yellow triangle on the right on a dark background",
    "a large green circle in the centre on a light background",
    "an orange triangle on the left",
    "a green triangle at the bottom",
    "a yellow circle at the top",
    "a purple circle on the right",
    "a small red square at the bottom",
    "a blue triangle in the centre on a dark background",
    "an orange circle on the right",
    "a large purple square on the left",
    "a yellow square on the left and a purple triangle on the right",
    "a red circle at the top and a blue square at the bottom",
    "a green triangle on the left and an orange circle on the right",
    "a blue circle at the top and a yellow triangle at the bottom",
]
SEEDS = (0, 1, 2)


def main(folder: str | None = None) -> None:
    from diffexplain.data.checker import score
    from diffexplain.models.default import DEFAULT_MODEL_DIR, load_model

    explainer = load_model(folder or DEFAULT_MODEL_DIR, progress=False)
    cases = []
    for prompt in CANDIDATES:
        right = []
        for seed in SEEDS:
            result = score(explainer.run(prompt, seed=seed).images[0], prompt)
            right.append(result.all_right)
        print(f"{''.join('✓' if r else '·' for r in right)}  {prompt}", flush=True)
        if any(right):
            cases.append((prompt, SEEDS[right.index(True)]))
    print("\nCASES = [")
    for prompt, seed in cases:
        print(f"    ({prompt!r}, {seed}),")
    print("]")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
