"""How much slower is a CPU run when other processes keep every core busy? (a script, not a test)

Each case runs in a fresh Python process (OpenMP reads its wait policy once, when torch loads):

- **before**: torch's own thread count (``DIFFEXPLAIN_THREADS=torch``): what a user got before
  ``diffexplain.threads``, and what an explainer whose count was decided on an idle machine gets when
  the machine becomes busy later;
- **after**: ``DIFFEXPLAIN_THREADS=auto`` (threads ≤ free cores, decided once, at the first run): the
  default, its count decided on the machine as it is;
- **passive**: ``auto`` with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep at once);
- **torch_passive**: torch's count with ``OMP_WAIT_POLICY=PASSIVE``;
- **short_spin**: torch's count with ``GOMP_SPINCOUNT=10000`` (libgomp's default spin is 300000).

Each is timed on an idle machine and with one spinning process per core (started ``--warmup`` seconds
before, so that the load average sees them). The figure is the slowdown, busy / idle. Goal: ≤ 2×
(with every core taken by another process, a fair share is half a core's worth per run thread).

    python benchmarks/bench_threads.py [--steps 10] [--repeats 2] [--warmup 25] [--json out.json]

``--quick`` (what CI runs, to catch a crash; its figures mean nothing): 2 steps, 1 repeat, one spinning
process started 1 s before, and only the ``before`` case (two fresh processes instead of six, about 6 s
each; ``after`` and ``passive`` run the same code with other environment variables). ``--modes`` and the
other options still apply.
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

MODES = ("before", "after", "passive", "torch_passive", "short_spin")
PROMPT = "a red circle on the left and a blue square on the right"
QUICK = {"steps": 2, "repeats": 1, "warmup": 1.0, "spinners": 1, "modes": ["before"]}


def child(mode: str, steps: int, repeats: int) -> None:
    """Time ``repeats`` runs after one warm-up, in this process; print the figures as JSON."""
    if mode in ("before", "torch_passive", "short_spin"):
        os.environ["DIFFEXPLAIN_THREADS"] = "torch"
    from diffexplain.models.default import load_default

    explainer = load_default(progress=False)
    trace = explainer.run(PROMPT, num_inference_steps=steps, seed=0, decode=False)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        trace = explainer.run(PROMPT, num_inference_steps=steps, seed=0, decode=False)
        times.append(time.perf_counter() - start)
    threads = trace.settings.get("threads")  # the count the runs used, decided at the first
    print(json.dumps({"seconds": statistics.median(times), "threads": threads}))


def spin() -> None:
    """Keep one core busy."""
    while True:
        pass


def case(mode: str, steps: int, repeats: int) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "DIFFEXPLAIN_THREADS", "GOMP_SPINCOUNT")
    }
    env["GOMP_SPINCOUNT"] = "10000" if mode == "short_spin" else "300000"  # 300000: libgomp's own default
    if mode in ("passive", "torch_passive"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--steps", str(steps), "--repeats", str(repeats)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if out.returncode:  # show why the child failed, not only that it did
        sys.stderr.write(out.stderr)
        raise SystemExit(f"bench_threads: the {mode!r} case failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=25.0, help="seconds the spinners run before timing")
    parser.add_argument(
        "--spinners", type=int, default=os.cpu_count() or 1, help="spinning processes (default: one per core)"
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="cases to run")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--json")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run (CI), no figures to quote: see the text above"
    )
    args = parser.parse_args(argv)
    if args.quick:  # the quick sizes stand in for the defaults; options given on the command line win
        args = parser.parse_args(argv, argparse.Namespace(**QUICK))
    if args.child:
        child(args.child, args.steps, args.repeats)
        return {}
    modes = [m for m in MODES if m in args.modes]
    r: dict = {"cores": os.cpu_count(), "steps": args.steps, "spinners": args.spinners}
    for mode in modes:
        r[f"{mode}_idle"] = case(mode, args.steps, args.repeats)
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.spinners)]
    for p in spinners:
        p.start()
    try:
        time.sleep(args.warmup)
        r["load_average"] = os.getloadavg()[0]
        for mode in reversed(modes):
            r[f"{mode}_busy"] = case(mode, args.steps, args.repeats)
    finally:
        for p in spinners:
            p.terminate()
    for mode in modes:
        idle, busy = r[f"{mode}_idle"], r[f"{mode}_busy"]
        r[f"{mode}_slowdown"] = busy["seconds"] / idle["seconds"]
        print(
            f"{mode:<13} idle {idle['seconds']:.2f} s ({idle['threads']} threads), busy {busy['seconds']:.2f} s "
            f"({busy['threads']} threads): {r[f'{mode}_slowdown']:.1f}× slower (goal ≤ 2×)"
        )
    print(
        f"{r['cores']} cores, {args.spinners} spinning, {args.steps} steps, "
        f"load average when busy {r['load_average']:.2f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return r


if __name__ == "__main__":
    main()
