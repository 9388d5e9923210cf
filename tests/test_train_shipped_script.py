"""scripts/train_shipped.sh runs the shipped model's recipe: the right presets, chained, resumable.

Training the real recipe takes hours, so a stand-in ``diffexplain`` on PATH records each call and writes
the model folder a finished stage leaves; what is checked is the script's chaining, against the presets
and the shipped ``model.json``'s recipe.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from diffexplain.models.config import PRESETS, PRESETS_NEEDING_INIT
from diffexplain.models.default import DEFAULT_MODEL_DIR

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_shipped.sh"

STAND_IN = """#!/usr/bin/env python3
import json, sys
from pathlib import Path
with open({log!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
out = Path(sys.argv[sys.argv.index("--out") + 1])
(out / "model").mkdir(parents=True, exist_ok=True)
(out / "model" / "model.json").write_text("{{}}")
"""


@pytest.fixture
def stand_in(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose ``diffexplain`` records its arguments in the returned log file."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    exe = bin_dir / "diffexplain"
    exe.write_text(STAND_IN.format(log=str(log)))
    exe.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    return env, log


def run_script(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_the_script_chains_the_shipped_recipe(stand_in: tuple[dict[str, str], Path], tmp_path: Path) -> None:
    env, log = stand_in
    out = tmp_path / "runs"
    printed = run_script(env, str(out), "--device", "cpu")
    made = calls(log)
    presets = [c[c.index("--preset") + 1] for c in made]
    # The stages of the shipped weights, in order: the earlier ones as recorded, then the last one.
    recipe = json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())["recipe"]
    recorded = [shlex.split(cmd) for cmd in recipe["earlier_stages"]]
    assert presets == [c[c.index("--preset") + 1] for c in recorded] + [recipe["preset"]]
    previous = None
    for call, name in zip(made, presets, strict=True):
        assert call[0] == "train" and name in PRESETS
        assert call[call.index("--out") + 1] == str(out / name)
        assert call[-2:] == ["--device", "cpu"]  # extra arguments reach every stage
        if name in PRESETS_NEEDING_INIT:
            assert call[call.index("--unet-init") + 1] == str(out / previous / "model")
        else:
            assert "--unet-init" not in call
        previous = name
    assert str(out / "pairs" / "model") in printed


def test_finished_stages_are_skipped_when_it_runs_again(
    stand_in: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, log = stand_in
    out = tmp_path / "runs"
    (out / "default" / "model").mkdir(parents=True)
    (out / "default" / "model" / "model.json").write_text("{}")  # stage 1-3 finished earlier
    printed = run_script(env, str(out))
    assert [c[c.index("--preset") + 1] for c in calls(log)] == ["refine", "bind", "settle", "pairs"]
    assert "default: done" in printed
    run_script(env, str(out))
    assert len(calls(log)) == 4  # nothing left to do
