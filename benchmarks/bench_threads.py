"""How much slower is a CPU run when other processes keep every core busy? (a script, not a test)

Each case runs in a fresh Python process (OpenMP reads its wait policy once, when torch loads):

- **before**: torch's own thread count, ``DIFFEXPLAIN_THREADS=torch``: what a user got before
  ``diffexplain.threads``;
- **after**: ``DIFFEXPLAIN_THREADS=auto`` (threads ≤ free cores): today's default;
- **passive**: the same with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep), for comparison.

Each is timed on an idle machine and with one spinning process per core (started ``--warmup`` seconds
before, so that the load average sees them). The figure is the slowdown, busy / idle. Goal: ≤ 2×
(with every core taken by another process, a fair share is half a core's worth per run thread).

    python benchmarks/bench_threads.py [--steps 10] [--repeats 2] [--warmup 25] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("before", "after", "passive")
PROMPT = "a red circle on the left and a blue square on the right"


def child(mode: str, steps: int, repeats: int) -> None:
    """Time ``repeats`` runs after one warm-up, in this process; print the figures as JSON."""
    if mode == "before":
        os.environ["DIFFEXPLAIN_THREADS"] = "torch"
    from diffexplain.models.default import load_default
    from diffexplain.threads import chosen_threads

    explainer = load_default(progress=False)
    explainer.run(PROMPT, num_inference_steps=steps, seed=0, decode=False)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        explainer.run(PROMPT, num_inference_steps=steps, seed=0, decode=False)
        times.append(time.perf_counter() - start)
    import torch

    print(
        json.dumps(
            {"seconds": statistics.median(times), "threads": chosen_threads() or torch.get_num_threads()}
        )
    )


def spin() -> None:
    """Keep one core busy."""
    while True:
        pass


def case(mode: str, steps: int, repeats: int) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "DIFFEXPLAIN_THREADS")
    }
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--steps", str(steps), "--repeats", str(repeats)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=25.0, help="seconds the spinners run before timing")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.steps, args.repeats)
        return {}
    r: dict = {"cores": os.cpu_count(), "steps": args.steps}
    for mode in MODES:
        r[f"{mode}_idle"] = case(mode, args.steps, args.repeats)
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(os.cpu_count() or 1)]
    for p in spinners:
        p.start()
    try:
        time.sleep(args.warmup)
        r["load_average"] = os.getloadavg()[0]
        for mode in reversed(MODES):
            r[f"{mode}_busy"] = case(mode, args.steps, args.repeats)
    finally:
        for p in spinners:
            p.terminate()
    for mode in MODES:
        idle, busy = r[f"{mode}_idle"], r[f"{mode}_busy"]
        r[f"{mode}_slowdown"] = busy["seconds"] / idle["seconds"]
        print(
            f"{mode:<6} idle {idle['seconds']:.2f} s ({idle['threads']} threads), busy {busy['seconds']:.2f} s "
            f"({busy['threads']} threads): {r[f'{mode}_slowdown']:.1f}× slower (goal ≤ 2×)"
        )
    print(f"{r['cores']} cores, {args.steps} steps, load average when busy {r['load_average']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return r


if __name__ == "__main__":
    main()
