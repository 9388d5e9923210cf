"""The teaching notebooks: committed without outputs, and each one runs end to end.

Each notebook is executed with nbclient in a temporary copy of ``notebooks/`` (so nothing is written
into the repository) with ``DIFFEXPLAIN_QUICK=1`` (notebook 02 trains the "tiny" preset instead of the
classroom one), ``PLOTLY_RENDERER=json`` and the Hugging Face hub offline (notebook 08 falls back to a
tiny Stable Diffusion built from configs when there is no GPU or no reachable ``MODEL_ID``).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 900  # generous: a loaded 2-core machine is many times slower than a quiet one
ENV = {
    "DIFFEXPLAIN_QUICK": "1",
    "PLOTLY_RENDERER": "json",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TQDM_DISABLE": "1",
}


def test_there_are_notebooks() -> None:
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(16)], [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert "widgets" not in nb.metadata, "strip the widget state before committing"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name} cell {i} has outputs: strip them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert nb.cells[-1].cell_type == "markdown" and "Exercises" in nb.cells[-1].source, (
        f"{path.name} should end with its exercises"
    )
    badges = [i for i, cell in enumerate(nb.cells) if "colab-badge.svg" in cell.source]
    assert badges == [0], (
        f"{path.name}: one Colab badge, the first cell (scripts/notebook_setup_cell.py); at {badges}"
    )


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    work = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS_DIR, work)
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(work / path.name, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(work)}},
    )
    started = time.perf_counter()
    client.execute(cwd=str(work))
    elapsed = time.perf_counter() - started
    print(f"{path.name}: {elapsed:.0f} s")
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.get("output_type") == "error"
    ]
    assert not errors, errors
    widget_errors = swallowed_widget_errors(nb)
    assert not widget_errors, f"a widget showed an error in its status line: {widget_errors}"


def swallowed_widget_errors(nb: nbformat.NotebookNode) -> list[str]:
    """Errors that widget callbacks caught and showed in their own status line (no cell error for those)."""
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    found = []
    for model in state.get("state", {}).values():
        value = model.get("state", {}).get("value")
        if isinstance(value, str) and "'>Error: " in value:
            found.append(value)
    return found
