"""Every script in benchmarks/ runs its ``--quick`` mode to the end and prints its figures.

The benchmarks are run by hand for the figures in docs/benchmarks.md (their full mode); this module only
keeps them from rotting: a script that crashes, or stops writing a figure it used to write, fails here.
The quick modes make no timing or quality assertions (their figures mean nothing); the benchmarks' own
correctness checks, such as bench_loop.py's parity of the traced run with the pipeline, still run.
Each script runs in a fresh process, from the repository root, as a person runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


@dataclass(frozen=True)
class Case:
    """How to run one script quickly, and what it must have written.

    ``args``: after ``--quick``; ``{tmp}`` is the test's temporary folder. ``printed``: text its standard
    output must hold. ``json``: the keys its JSON figures must have (from ``--json {tmp}/out.json``, or
    from standard output where ``json_on_stdout``). ``files``: what else it must have written in ``{tmp}``.
    """

    args: tuple[str, ...] = ()
    printed: tuple[str, ...] = ()
    json: tuple[str, ...] = ()
    json_on_stdout: bool = False
    files: tuple[str, ...] = ()


JSON = ("--json", "{tmp}/out.json")
SCRIPTS = {
    "bench_attention": Case(JSON, ("place share",), ("_settings",)),
    "bench_attention_by_noise": Case(JSON, ("own-half share",), ("own_half_share", "timesteps")),
    "bench_attention_maps": Case(JSON, ("goal ≤ 1.10×",), ("embedded", "sd_shaped", "place_shares")),
    "bench_cascade": Case(
        ("--compare", "--threads", "1", *JSON),
        ("a picture (goal ≤",),
        ("one_object", "two_object", "one_object_stage_I", "latent_one_object", "image_s", "latent_image_s"),
    ),
    "bench_dialects": Case(JSON, ("steps: 1 obj / 2 obj",), ("rows", "n_one", "n_two", "steps")),
    "bench_early_binding": Case(JSON, ("side score",), ("dataset pictures",)),
    "bench_gan": Case(
        ("--grid", "{tmp}/grid.png", *JSON), ("modes_in_first_k",), ("rows",), files=("grid.png",)
    ),
    "bench_guiders": Case(JSON, ("at gamut edge",), ("_settings", "methods")),
    "bench_img2img": Case(JSON, ("old shape", "shift (px)"), ("_settings", "input_right", "strengths")),
    "bench_loop": Case(("--json",), (), ("families",), json_on_stdout=True),
    "bench_model": Case(
        ("--grid", "{tmp}/grid.png", *JSON),
        ("cold start", "one image, warm"),
        ("vae", "checker", "generation", "plain", "speed", "cold"),
        files=("grid.png",),
    ),
    "bench_noise_levels": Case(JSON, ("x̂0 MSE",), ("rows", "z0_variance")),
    "bench_position": Case(JSON, ("follows the caption",), ("pairs", "two_objects", "exchanged_words")),
    "bench_scrub": Case(JSON, ("bytes per trace",), ("settings", "bytes_per_trace", "browser")),
    "bench_text_binding": Case((), ("linear probes", '"top" / "left"')),
    "bench_threads": Case(JSON, ("slower (goal ≤ 2×)",), ("before_slowdown", "load_average")),
    "sample_grid": Case(("--out", "{tmp}/grid.png"), ("wrote",), files=("grid.png",)),
}
"""Every script in benchmarks/, by name: a new one fails ``test_every_script_is_run`` until it is added."""


def test_every_script_is_run() -> None:
    # loop_<family>.py are bench_loop's setups (no script of their own): its quick mode runs each of them
    scripts = [p.stem for p in BENCHMARKS.glob("*.py") if not p.stem.startswith("loop_")]
    assert sorted(scripts) == sorted(SCRIPTS)


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_quick_mode(name: str, tmp_path: Path) -> None:
    case = SCRIPTS[name]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # bench_threads drops it itself
    args = [a.format(tmp=tmp_path) for a in case.args]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 0, f"{name} --quick failed after {seconds:.0f} s:\n{done.stderr[-4000:]}"
    for text in case.printed:
        assert text in done.stdout, f"{name} --quick did not print {text!r}:\n{done.stdout[-2000:]}"
    if case.json:
        figures = json.loads(done.stdout if case.json_on_stdout else (tmp_path / "out.json").read_text())
        assert not set(case.json) - set(figures), f"{name}: missing figures {set(case.json) - set(figures)}"
    for file in case.files:
        assert (tmp_path / file).stat().st_size > 0, f"{name} --quick wrote no {file}"
