"""The ``diffexplain`` command: ``explain`` writes its five files (the page: test_html_page.py); bad arguments fail clearly."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffexplain import Trace
from diffexplain.cli import main
from diffexplain.models.default import DEFAULT_MODEL_DIR
from diffexplain.report import STRIP_FRAMES

PROMPT = "a red circle on the left"
STEPS = 3
PANEL, GAP = 128, 4  # report.py's panel size and render.strip's gap


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``diffexplain explain`` on the embedded model, 3 steps: the output folder and what it printed."""
    out = tmp_path_factory.mktemp("explain") / "out"
    argv = ["explain", PROMPT, "--out", str(out), "--steps", str(STEPS), "--seed", "1"]
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.delenv("DIFFEXPLAIN_MODEL", raising=False)
        assert main([*argv, "--guidance-scale", "6", "--scheduler", "ddim", "--device", "cpu"]) == 0
    return out, printed.getvalue()


def test_explain_writes_the_five_files(explained: tuple[Path, str]) -> None:
    out, printed = explained
    names = ["image.png", "pred_x0_strip.png", "cfg_comparison.png", "trace.safetensors", "trace.html"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for name in names:
        assert str(out / name) in printed  # each path is printed for the user
    assert Image.open(out / "image.png").size == (64, 64)
    frames = min(STEPS, STRIP_FRAMES)
    assert Image.open(out / "pred_x0_strip.png").size == (frames * (PANEL + GAP) - GAP, PANEL + 14)
    assert Image.open(out / "cfg_comparison.png").size == (3 * (PANEL + GAP) - GAP, PANEL + 14)


def test_explain_trace_loads_and_matches_the_image(explained: tuple[Path, str]) -> None:
    out, _ = explained
    trace = Trace.load(out / "trace.safetensors")
    assert len(trace) == STEPS
    assert trace.settings["guidance_scale"] == 6.0
    assert trace.settings["model"]["fingerprint"]
    png = np.asarray(Image.open(out / "image.png").convert("RGB"))
    assert np.array_equal(np.asarray(trace.images[0].convert("RGB")), png)


def test_explain_cfg_comparison_shows_a_difference(explained: tuple[Path, str]) -> None:
    out, _ = explained
    panels = np.asarray(Image.open(out / "cfg_comparison.png").convert("RGB")).astype(int)
    off, on, diff = (panels[:PANEL, i * (PANEL + GAP) : i * (PANEL + GAP) + PANEL] for i in range(3))
    assert not np.array_equal(off, on)  # guidance changes the image (same seed)
    assert np.array_equal(diff, np.abs(on - off))


def test_explain_strip_frames_differ(explained: tuple[Path, str]) -> None:
    out, _ = explained
    strip = np.asarray(Image.open(out / "pred_x0_strip.png").convert("RGB")).astype(int)
    first, last = strip[:PANEL, :PANEL], strip[:PANEL, -PANEL:]
    assert np.abs(first - last).mean() > 1.0  # x̂0 changes between the first and last step


# ---- bad arguments --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required"),
        (["frobnicate"], "invalid choice"),
        (["explain"], "prompt"),
        (["explain", PROMPT, "--steps", "0"], "--steps: must be at least 1, got 0"),
        (["explain", PROMPT, "--steps", "-3"], "--steps: must be at least 1"),
        (["explain", PROMPT, "--steps", "two"], "--steps: expected a whole number, got 'two'"),
        (["explain", PROMPT, "--guidance-scale", "high"], "--guidance-scale: expected a number, got 'high'"),
        (
            ["explain", PROMPT, "--guidance-scale", "nan"],
            "--guidance-scale: expected a finite number, got 'nan'",
        ),
        (
            ["explain", PROMPT, "--guidance-scale", "inf"],
            "--guidance-scale: expected a finite number, got 'inf'",
        ),
        (["explain", PROMPT, "--scheduler", "bogus"], "--scheduler: invalid choice: 'bogus'"),
        (
            ["explain", PROMPT, "--seed", "1.5"],
            "--seed: expected a whole number from 0 to 2**64 − 1, got '1.5'",
        ),
        (["explain", PROMPT, "--seed", "-1"], "--seed: must be a whole number from 0 to 2**64 − 1, got -1"),
        (
            ["explain", PROMPT, "--seed", str(2**64)],
            f"--seed: must be a whole number from 0 to 2**64 − 1, got {2**64}",
        ),
        (
            ["train", "--preset", "huge"],
            "invalid choice: 'huge' (choose from default, refine, bind, settle, pairs, classroom, flow, flow-classroom, tiny, gan, gan-classroom, gan-tiny, pixel-cascade, pixel-cascade-tiny)",
        ),
        (["export"], "--to"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message.replace("'", "") in capsys.readouterr().err.replace("'", "")


def test_missing_model_folder_fails_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", PROMPT, "--model", str(tmp_path / "no-such-model"), "--out", str(out)])
    assert exit_info.value.code == 2
    assert "no-such-model: no such folder" in capsys.readouterr().err
    assert not out.exists()


def test_folder_that_is_not_a_model_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", PROMPT, "--model", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "neither model.json" in capsys.readouterr().err


def test_out_that_is_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "taken").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", PROMPT, "--model", str(DEFAULT_MODEL_DIR), "--out", str(tmp_path / "taken")])
    assert exit_info.value.code == 2
    assert "a file is in the way" in capsys.readouterr().err


def test_damaged_model_folder_exits_1_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text("{not json")
    assert main(["explain", PROMPT, "--model", str(model), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("diffexplain: error:")
    assert "model.json: not valid JSON" in err
    assert "Traceback" not in err


def test_export_without_a_run_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--out", str(tmp_path / "no-run"), "--to", str(tmp_path / "model")]) == 1
    assert "config.json" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


@pytest.mark.slow
def test_console_command_exit_code(tmp_path: Path) -> None:
    """The real process: argparse's message on stderr and exit code 2, no traceback, nothing written."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "diffexplain.cli", "train", "--preset", "nope", "--out", str(tmp_path / "r")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2
    assert "invalid choice: 'nope'" in done.stderr and "tiny" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()
