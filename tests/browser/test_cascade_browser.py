"""A cascade trace (DeepFloyd IF, tiny parts) in a real JupyterLab: the StepExplorer's stage chooser
switches the shown stage (header, pictures, step slider) with no error output."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from lab_helpers import (
    click_button,
    count_error_outputs,
    error_outputs,
    open_notebook,
    run_all,
    screenshot,
    wait_for_text,
    wait_for_widget_image,
)

SETUP = """\
import os, warnings
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
from diffexplain import Cascade
from diffexplain.widgets import StepExplorer
from tests.tiny_families import tiny_if_pipelines
cascade = Cascade.from_pipelines(*tiny_if_pipelines(), progress=False)
trace = cascade.run("a red circle", seed=0, I=dict(num_inference_steps=6), II=dict(num_inference_steps=4))
"""


@pytest.mark.browser
@pytest.mark.timeout(600)
def test_step_explorer_stage_chooser_in_lab(lab_page, lab_server, tmp_path: Path):
    page = lab_page
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP), nbformat.v4.new_code_cell("StepExplorer(trace)")]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    path = tmp_path / "cascade_step_explorer.ipynb"
    nbformat.write(nb, path)
    open_notebook(page, lab_server.add_notebook(path))
    state = run_all(page, timeout=300)
    assert state["done"] == state["total"] == 2 and state["errors"] == 0, (state, error_outputs(page))
    wait_for_text(page, "dx-header", "stage II")
    x0 = wait_for_widget_image(page, "dx-x0-image")
    click_button(page, text="stage I")
    wait_for_text(page, "dx-header", "stage I ·")
    wait_for_widget_image(page, "dx-x0-image", changed_from=x0)
    wait_for_text(page, "dx-step-info", "of 6")  # stage I's 6 steps (stage II has 4)
    assert count_error_outputs(page) == 0, error_outputs(page)
    screenshot(page, Path("test-artifacts/browser/screenshots/cascade_step_explorer.png"), "dx-step-explorer")


KANDINSKY_SETUP = """\
import os, warnings
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
from diffexplain import Cascade
from diffexplain.families.tiny_kandinsky import tiny_kandinsky_pipelines
from diffexplain.widgets import StepExplorer
cascade = Cascade.from_pipelines(*tiny_kandinsky_pipelines(), names=("prior", "decoder"), progress=False)
trace = cascade.run("a red circle", seed=0, prior=dict(num_inference_steps=6), decoder=dict(num_inference_steps=4))
"""


@pytest.mark.browser
@pytest.mark.timeout(600)
def test_kandinsky_prior_stage_shows_its_embedding_in_lab(lab_page, lab_server, tmp_path: Path):
    """Kandinsky 2.2 (tiny parts): the decoder stage first, then the prior stage, whose x_t is an image
    embedding drawn as a grid of numbers with a caption that says so."""
    page = lab_page
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(KANDINSKY_SETUP), nbformat.v4.new_code_cell("StepExplorer(trace)")]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    path = tmp_path / "kandinsky_step_explorer.ipynb"
    nbformat.write(nb, path)
    open_notebook(page, lab_server.add_notebook(path))
    state = run_all(page, timeout=300)
    assert state["done"] == state["total"] == 2 and state["errors"] == 0, (state, error_outputs(page))
    wait_for_text(page, "dx-header", "stage decoder")
    x0 = wait_for_widget_image(page, "dx-x0-image")
    click_button(page, text="stage prior")
    wait_for_text(page, "dx-header", "CLIP image embedding of 32 numbers, not a picture")
    wait_for_widget_image(page, "dx-x0-image", changed_from=x0)
    wait_for_text(page, "dx-step-info", "of 6")  # the prior's 6 steps (the decoder has 4)
    assert count_error_outputs(page) == 0, error_outputs(page)
    screenshot(
        page, Path("test-artifacts/browser/screenshots/kandinsky_step_explorer.png"), "dx-step-explorer"
    )
