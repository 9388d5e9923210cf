"""Benchmark: the traced loop vs StableDiffusionPipeline, fork cost by step, and trace memory per step.

    python benchmarks/bench_loop.py            # human-readable
    python benchmarks/bench_loop.py --json     # machine-readable

Same parts and seed for every measurement; each figure is the median of ``--repeats`` runs.
The U-Net is small but not tiny (block_out_channels (64, 128), 32×32 latents) so it dominates.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffexplain import Explainer  # noqa: E402
from tests.tiny_parts import tiny_parts, tiny_unet  # noqa: E402

PROMPT = "a red square on the left"


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scheduler", default="euler_a")
    parser.add_argument("--json", action="store_true", help="print machine-readable figures")
    args = parser.parse_args()

    parts = tiny_parts()
    parts["unet"] = tiny_unet(block_out_channels=(64, 128), sample_size=32)
    explainer = Explainer(**parts, progress=False).set_scheduler(args.scheduler)
    pipe = StableDiffusionPipeline(
        **{**parts, "scheduler": explainer.scheduler},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    n = args.steps

    def run_pipeline():
        generator = torch.Generator().manual_seed(0)
        return pipe(PROMPT, num_inference_steps=n, generator=generator, output_type="latent").images

    def run_traced():
        return explainer.run(PROMPT, num_inference_steps=n, seed=0, decode=False)

    run_pipeline(), run_traced()  # warm-up
    # interleave the two so that background load affects both alike
    pipe_times, run_times = [], []
    for _ in range(args.repeats):
        pipe_times.append(median_time(run_pipeline, 1))
        run_times.append(median_time(run_traced, 1))
    t_pipe, t_run = statistics.median(pipe_times), statistics.median(run_times)

    trace = run_traced()
    assert torch.equal(trace.final_latents, run_pipeline())
    forks = {}
    for k in sorted({0, n // 4, n // 2, 3 * n // 4}):
        t_fork = median_time(lambda k=k: explainer.fork(trace, k), args.repeats)
        forks[k] = {"fraction": t_fork / t_run, "ideal": (n - k) / n}

    figures = {
        "device": str(explainer.device),
        "torch_threads": torch.get_num_threads(),
        "scheduler": type(explainer.scheduler).__name__,
        "steps": n,
        "repeats": args.repeats,
        "pipeline_s": t_pipe,
        "run_s": t_run,
        "run_over_pipeline": t_run / t_pipe,
        "fork": {str(k): v for k, v in forks.items()},
        "trace_bytes": trace.memory_bytes(),
        "trace_bytes_per_step": trace.memory_per_step(),
        "latents_shape": list(trace.final_latents.shape),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"{figures['scheduler']}, {n} steps, median of {args.repeats}, {figures['device']}")
    print(f"pipeline  {t_pipe * 1000:8.1f} ms")
    print(f"run       {t_run * 1000:8.1f} ms   ratio run/pipeline = {t_run / t_pipe:.3f} (goal ≤ 1.03)")
    for k, v in forks.items():
        print(f"fork k={k:<3d} {v['fraction']:.3f} of a run (ideal {v['ideal']:.3f})")
    print(
        f"trace memory {trace.memory_bytes() / 2**20:.2f} MiB, {trace.memory_per_step() / 2**10:.1f} KiB per step"
    )


if __name__ == "__main__":
    main()
