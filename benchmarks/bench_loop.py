"""Benchmark, per family (SD, SDXL, SD3, Flux): the traced loop vs the diffusers pipeline, fork cost by step,
trace memory per step, and the first run against the second.

    python benchmarks/bench_loop.py                    # every family, human-readable
    python benchmarks/bench_loop.py --family sd3       # one family
    python benchmarks/bench_loop.py --json             # machine-readable
    python benchmarks/bench_loop.py --quick            # smoke run (CI): 2 steps, 1 repeat, 32 px, every family

A family beyond these four brings its own setup as ``benchmarks/loop_<family>.py`` (found by name, so
adding one edits nothing here): ``FAMILY`` (its short name) and ``setup() -> dict`` with ``pipe`` (the
diffusers pipeline over small parts), ``options`` (run options both sides take, e.g. a short
``max_sequence_length``), ``traced`` (guidance keywords for ``Explainer.run``), ``pipeline`` (the same
guidance as the pipeline's own keywords) and optionally ``to_trace`` (pipeline latents → the trace's layout,
e.g. unpacking tokens), ``size`` (the image side its parts need, overriding ``--size``) and ``call`` (how to
call a pipeline that is not called like the classic ones, e.g. a Modular Diffusers pipeline:
``call(pipe, prompt, num_inference_steps, generator, **keywords) -> latents``).

Same parts and seed for every measurement of a family; each figure is the median of ``--repeats``
runs, the pipeline and the traced run interleaved so that background load affects both alike. The
denoisers are small but not tiny (32×32 latents, wider blocks) so that the model call dominates, as
it does at real sizes. Goals (from the model-seam issue): run/pipeline ≤ 1.03, a fork from step k
costs ≤ (N − k)/N + 0.05 of a run, and the first run ≤ 1.05 × the second (no hidden first-run work).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffexplain import Explainer  # noqa: E402

PROMPT = "a red square on the left"
QUICK = {"steps": 2, "repeats": 1, "size": 32}  # --quick: every family and code path, parity included


def extra_setups() -> dict[str, Any]:
    """The ``benchmarks/loop_<family>.py`` modules beside this file, by their ``FAMILY``."""
    found = {}
    for path in sorted(Path(__file__).parent.glob("loop_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found[module.FAMILY] = module
    return found


BUILT_IN = ["sd", "sdxl", "sd3", "flux"]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bigger(model: Any, **changes: Any) -> Any:
    """The same architecture with a changed config, seeded (so every build is the same)."""
    torch.manual_seed(0)
    return type(model).from_config({**model.config, **changes}).eval()


def pipeline(family: str) -> tuple[Any, dict[str, Any]]:
    """A diffusers pipeline of the family over small parts, and the run options it needs."""
    from diffusers import (
        FluxPipeline,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    from tests.tiny_families import (
        FLUX_MAX_SEQUENCE_LENGTH,
        SD3_MAX_SEQUENCE_LENGTH,
        tiny_flux_parts,
        tiny_sd3_parts,
        tiny_sdxl_parts,
    )
    from tests.tiny_parts import tiny_parts, tiny_unet

    if family == "sd":
        parts = {**tiny_parts(), "unet": tiny_unet(block_out_channels=(64, 128), sample_size=32)}
        pipe = StableDiffusionPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
        options: dict[str, Any] = {}
    elif family == "sdxl":
        parts = tiny_sdxl_parts()
        parts["unet"] = bigger(parts["unet"], block_out_channels=(64, 128), sample_size=32)
        pipe = StableDiffusionXLPipeline(**parts, add_watermarker=False)
        options = {}
    elif family == "flux":  # two branches (w = 5 is true CFG), each its own call, as the pipeline
        parts = tiny_flux_parts()
        parts["transformer"] = bigger(
            parts["transformer"],
            num_layers=2,
            num_single_layers=4,
            num_attention_heads=8,
            attention_head_dim=16,
            axes_dims_rope=(4, 6, 6),
        )
        pipe = FluxPipeline(**parts)
        options = {"max_sequence_length": FLUX_MAX_SEQUENCE_LENGTH}
    else:
        parts = tiny_sd3_parts()
        parts["transformer"] = bigger(
            parts["transformer"],
            sample_size=32,
            num_layers=6,
            num_attention_heads=8,
            attention_head_dim=16,
            caption_projection_dim=128,
            pos_embed_max_size=32,
        )
        pipe = StableDiffusion3Pipeline(**parts)
        options = {"max_sequence_length": SD3_MAX_SEQUENCE_LENGTH}
    pipe.set_progress_bar_config(disable=True)
    return pipe, options


def guidance(family: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """w = 5 for the traced run (with the defaults: attention maps on) and the pipeline's same guidance:
    Flux's w is its pipeline's true CFG."""
    if family == "flux":
        return {"guidance_scale": 5.0}, {
            "true_cfg_scale": 5.0,
            "negative_prompt": "",
        }
    return {"guidance_scale": 5.0}, {"guidance_scale": 5.0}


def bench(family: str, steps: int, repeats: int, scheduler: str | None, side: int = 64) -> dict[str, Any]:
    extra = extra_setups().get(family)
    to_trace, call = None, None
    if extra is None:
        pipe, options = pipeline(family)
        traced_guidance, pipe_guidance = guidance(family)
        timed_guidance = pipe_guidance if family == "flux" else {}  # the others: their default w, as before
    else:
        setup = extra.setup()
        pipe, options, to_trace = setup["pipe"], setup.get("options", {}), setup.get("to_trace")
        traced_guidance, pipe_guidance = setup["traced"], setup["pipeline"]
        timed_guidance = pipe_guidance
        side = setup.get("size", side)
        call = setup.get("call")
        pipe.set_progress_bar_config(disable=True)
    if call is None:  # a classic pipeline: its output_type="latent" images

        def call(pipe, prompt, num_inference_steps, generator, **keywords):
            return pipe(
                prompt=prompt,  # by name: Flux2KleinPipeline's first argument is image
                num_inference_steps=num_inference_steps,
                generator=generator,
                output_type="latent",
                **keywords,
            ).images

    explainer = Explainer.from_pipeline(pipe, progress=False)
    if scheduler:
        explainer.set_scheduler(scheduler)
        pipe.scheduler = explainer.scheduler
    n = steps
    size = {"height": side, "width": side}

    def run_pipeline():
        generator = torch.Generator().manual_seed(0)
        return call(pipe, PROMPT, n, generator, **size, **options, **timed_guidance)

    def run_traced(ex: Explainer = explainer):
        return ex.run(
            PROMPT, num_inference_steps=n, seed=0, decode=False, **traced_guidance, **size, **options
        )

    run_pipeline()  # warm-up of torch's kernels, on the pipeline only
    # the first run of a fresh Explainer against its second: no hidden first-run work
    first_over_second = []
    for _ in range(repeats):
        fresh = Explainer.from_pipeline(pipe, progress=False).set_scheduler(explainer.scheduler)
        first = median_time(lambda fresh=fresh: run_traced(fresh), 1)
        first_over_second.append(first / median_time(lambda fresh=fresh: run_traced(fresh), 1))

    # the pipeline, the traced run and the forks interleaved, so that background load affects all alike
    trace = run_traced()
    loop_steps = len(trace)  # one per model call: more than n for PNDM's warm-up or 2nd-order schedulers
    ks = (loop_steps // 4, loop_steps // 2, 3 * loop_steps // 4)
    pipe_times, run_times, fork_fractions = [], [], {k: [] for k in ks}
    for _ in range(repeats):
        pipe_times.append(median_time(run_pipeline, 1))
        run_times.append(median_time(run_traced, 1))
        for k in ks:
            fork_fractions[k].append(median_time(lambda k=k: explainer.fork(trace, k), 1) / run_times[-1])
    t_pipe, t_run = statistics.median(pipe_times), statistics.median(run_times)
    forks = {
        str(k): {"fraction": statistics.median(v), "goal": (loop_steps - k) / loop_steps + 0.05}
        for k, v in fork_fractions.items()
    }

    trace = run_traced()
    expected = call(pipe, PROMPT, n, torch.Generator().manual_seed(0), **size, **options, **pipe_guidance)
    if family == "flux":  # packed [B, (h/2)·(w/2), 4C]: compare as the trace holds them
        expected = pipe._unpack_latents(expected, size["height"], size["width"], pipe.vae_scale_factor)
    if to_trace is not None:
        expected = to_trace(expected, size)
    assert torch.equal(trace.final_latents, expected), f"{family}: the traced run differs from the pipeline"
    return {
        "family": family,
        "model": type(explainer.model).__name__,
        "scheduler": type(explainer.scheduler).__name__,
        "steps": n,
        "loop_steps": loop_steps,
        "repeats": repeats,
        "pipeline_s": t_pipe,
        "run_s": t_run,
        "run_over_pipeline": t_run / t_pipe,
        "fork": forks,
        "first_over_second": statistics.median(first_over_second),
        "trace_bytes_per_step": trace.memory_per_step(),
        "latents_shape": list(trace.final_latents.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=BUILT_IN + list(extra_setups()), action="append")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--scheduler", help="a short scheduler name of every chosen family (default: its own)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared CPU)")
    parser.add_argument(
        "--size", type=int, default=64, help="image side in pixels (default 64: 32×32 latents)"
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable figures")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run (CI), no figures to quote: 2 steps, 1 repeat, 32 px"
    )
    args = parser.parse_args()
    if args.quick:  # the quick sizes stand in for the defaults; options given on the command line win
        args = parser.parse_args(namespace=argparse.Namespace(**QUICK))
    torch.set_num_threads(args.threads)

    results = [
        bench(f, args.steps, args.repeats, args.scheduler, args.size)
        for f in args.family or BUILT_IN + list(extra_setups())
    ]
    if args.json:
        print(
            json.dumps(
                {"device": "cpu", "torch_threads": torch.get_num_threads(), "families": results}, indent=2
            )
        )
        return
    print(f"cpu, {torch.get_num_threads()} torch threads, median of {args.repeats}")
    for r in results:
        print(
            f"\n{r['family']}: {r['model']}, {r['scheduler']}, {r['steps']} steps, latents {r['latents_shape']}"
        )
        ok = "ok" if r["run_over_pipeline"] <= 1.03 else "over"
        print(f"  pipeline {r['pipeline_s'] * 1000:8.1f} ms   run {r['run_s'] * 1000:8.1f} ms")
        print(f"  run/pipeline          {r['run_over_pipeline']:.3f}  (goal ≤ 1.03: {ok})")
        for k, v in r["fork"].items():
            ok = "ok" if v["fraction"] <= v["goal"] else "over"
            print(f"  fork at k={k:<3s}        {v['fraction']:.3f} of a run (goal ≤ {v['goal']:.3f}: {ok})")
        ok = "ok" if r["first_over_second"] <= 1.05 else "over"
        print(f"  first run / second    {r['first_over_second']:.3f}  (goal ≤ 1.05: {ok})")
        print(f"  trace memory          {r['trace_bytes_per_step'] / 2**10:.1f} KiB per step")


if __name__ == "__main__":
    main()
