"""The README's Python examples run as written, on the embedded model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples() -> None:
    assert len(python_blocks()) >= 2


@pytest.mark.slow
def test_readme_examples_run(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    trace, fork, same = namespace["trace"], namespace["fork"], namespace["same"]
    assert fork.forked_from == 10 and same.forked_from == 10
    assert (tmp_path / "lesson.safetensors").is_file()
    import torch

    assert torch.equal(same["step.next", len(trace) - 1], trace["step.next", len(trace) - 1])
    assert trace.images[0].size == (64, 64)
    assert namespace["blue"].shape == (1, 64, 64) and namespace["no_blue"].forked_from == 0
