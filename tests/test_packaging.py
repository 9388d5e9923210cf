"""Packaging without building: metadata, package data, copying the notebooks out, and the setup cell.

The built wheel itself is checked in tests/test_wheel.py (slow).
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.util
import io
import sys
import tomllib
import types
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

import diffexplain
from diffexplain import colab
from diffexplain import notebooks as shipped
from diffexplain.cli import main

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def load_setup_cell_script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "notebook_setup_cell", REPO / "scripts" / "notebook_setup_cell.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = load_setup_cell_script()


# ---- metadata and package data ---------------------------------------------------------------------
def test_metadata_version_licence_and_urls_follow_the_one_setting() -> None:
    project, setting = PYPROJECT["project"], PYPROJECT["tool"]["diffexplain"]
    assert project["version"] == diffexplain.__version__
    assert project["license"] == "Apache-2.0" and "Apache License" in (REPO / "LICENSE").read_text()
    assert project["license-files"] == ["LICENSE", "diffexplain/fonts/LICENSE-DejaVu.txt"]  # the font's
    for label, url in project["urls"].items():
        assert url.startswith(f"https://github.com/{setting['github']}"), (label, url, setting)
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(project["urls"])


def test_every_data_file_in_the_package_is_package_data() -> None:
    """A file the package opens (weights, configs...) that no package-data pattern names would miss the wheel."""
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]
    missing = []
    for path in (REPO / "diffexplain").rglob("*"):
        if not path.is_file() or path.suffix in {".py", ".pyc"} or "__pycache__" in path.parts:
            continue
        rel = path.relative_to(REPO)
        covered = False
        for package, globs in patterns.items():
            folder = Path(*package.split("."))
            if rel.is_relative_to(folder):
                inside = rel.relative_to(folder).as_posix()
                covered |= any(fnmatch.fnmatch(inside, g) for g in globs)
        if not covered:
            missing.append(rel.as_posix())
    assert not missing, f"add these to [tool.setuptools.package-data]: {missing}"


def test_manifest_puts_the_notebooks_and_licence_in_the_sdist() -> None:
    manifest = (REPO / "MANIFEST.in").read_text().splitlines()
    assert "include notebooks/*.ipynb" in manifest and "include LICENSE" in manifest


# ---- copying the notebooks out ------------------------------------------------------------------------
def test_the_checkout_serves_the_notebooks_in_an_editable_install() -> None:
    assert shipped.source_dir() == REPO / "notebooks"
    assert shipped.names() == [p.name for p in NOTEBOOKS]


def test_copy_to_writes_every_notebook_then_finds_them_unchanged(tmp_path: Path) -> None:
    target = tmp_path / "new" / "lessons"
    first = shipped.copy_to(target)
    assert first.written == [p.name for p in NOTEBOOKS] and not first.unchanged
    for path in NOTEBOOKS:
        assert (target / path.name).read_bytes() == path.read_bytes()
    again = shipped.copy_to(target)
    assert again.unchanged == first.written and not again.written and not again.overwritten


def test_copy_to_keeps_a_changed_notebook_and_writes_nothing(tmp_path: Path) -> None:
    shipped.copy_to(tmp_path)
    mine = tmp_path / NOTEBOOKS[0].name
    mine.write_text(mine.read_text() + " ", encoding="utf-8")  # e.g. saved with outputs
    edited = mine.read_bytes()
    (tmp_path / NOTEBOOKS[1].name).unlink()
    with pytest.raises(shipped.NotebooksChangedError, match=NOTEBOOKS[0].name) as err:
        shipped.copy_to(tmp_path)
    assert err.value.changed == [NOTEBOOKS[0].name] and "--force" in str(err.value)
    assert mine.read_bytes() == edited
    assert not (tmp_path / NOTEBOOKS[1].name).exists(), "nothing is written when a notebook would be lost"
    forced = shipped.copy_to(tmp_path, force=True)
    assert forced.overwritten == [NOTEBOOKS[0].name] and forced.written == [NOTEBOOKS[1].name]
    assert mine.read_bytes() == NOTEBOOKS[0].read_bytes()


def test_copy_to_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "lessons").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="folder="):
        shipped.copy_to(tmp_path / "lessons")


def test_cli_notebooks_says_what_it_wrote_and_keeps_changes(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["notebooks", str(tmp_path / "nb")]) == 0
    assert f"written: {', '.join(p.name for p in NOTEBOOKS)}" in out.getvalue()
    (tmp_path / "nb" / NOTEBOOKS[-1].name).write_text("{}")
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["notebooks", str(tmp_path / "nb")]) == 1
    assert NOTEBOOKS[-1].name in err.getvalue() and (tmp_path / "nb" / NOTEBOOKS[-1].name).read_text() == "{}"
    with contextlib.redirect_stdout(io.StringIO()) as forced:
        assert main(["notebooks", str(tmp_path / "nb"), "--force"]) == 0
    assert f"overwritten (--force): {NOTEBOOKS[-1].name}" in forced.getvalue()


# ---- the setup cell --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_with_the_badge_and_setup_cell(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    badge, setup = script.top_cells(path.name, script.settings())
    hint = "run: python scripts/notebook_setup_cell.py"
    assert (nb.cells[0].get("id"), nb.cells[0].source) == (script.BADGE_ID, badge.source), hint
    first_code = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert (first_code.get("id"), first_code.source) == (script.SETUP_ID, setup.source), hint
    ids = [c.get("id") for c in nb.cells]
    assert ids.count(script.BADGE_ID) == 1 and ids.count(script.SETUP_ID) == 1
    assert not script.update(path, script.settings(), check=True), hint  # byte for byte the script's output


def test_setup_cell_names_the_repository_once_and_is_valid_ipython() -> None:
    config = script.settings()
    badge, setup = script.top_cells("00_quickstart.ipynb", config)
    target = f"github/{config['github']}/blob/{config['ref']}/notebooks/00_quickstart.ipynb"
    assert f"https://colab.research.google.com/{target}" in badge.source
    assert f"git+https://github.com/{config['github']}@{config['ref']}" in setup.source
    python = TransformerManager().transform_cell(setup.source)  # %pip inside the `if`, as IPython runs it
    assert (
        "get_ipython().run_line_magic('pip', 'install -q --upgrade-strategy only-if-needed {keep}" in python
    )
    compile(python, "setup cell", "exec")


def test_script_is_idempotent_and_repairs_moved_cells(tmp_path: Path) -> None:
    path = tmp_path / NOTEBOOKS[0].name
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    (setup,) = [c for c in nb.cells if c.get("id") == script.SETUP_ID]
    badge, rest = nb.cells[0], [c for c in nb.cells[1:] if c is not setup]
    setup.source = "DEVICE = 'an old version of the setup cell'"
    nb.cells = [*rest[:3], setup, *rest[3:], badge]  # moved down, out of order
    nbformat.write(nb, path)
    assert script.main([str(path), "--check"]) == 1
    assert script.main([str(path)]) == 0
    assert path.read_bytes() == NOTEBOOKS[0].read_bytes()
    assert script.main([str(path), "--check"]) == 0
    assert not script.update(path, script.settings()), "a second run changes nothing"


def test_the_setting_moves_badge_and_install_together(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.diffexplain]\ngithub = "a-school/diffexplain-fork"\nref = "v0.1.0"\n')
    config = script.settings(pyproject)
    badge, setup = script.top_cells("03_sampling_loop.ipynb", config)
    assert "github/a-school/diffexplain-fork/blob/v0.1.0/notebooks/03_sampling_loop.ipynb" in badge.source
    assert "git+https://github.com/a-school/diffexplain-fork@v0.1.0" in setup.source
    pyproject.write_text('[tool.diffexplain]\ngithub = "no-slash"\nref = "main"\n')
    with pytest.raises(SystemExit, match="owner/name"):
        script.settings(pyproject)


def test_setup_outside_colab_changes_nothing_and_picks_the_device(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    assert not colab.in_colab()
    device = colab.setup()
    assert device == ("cuda" if torch.cuda.is_available() else "cpu")
    printed = capsys.readouterr().out
    assert f"diffexplain {diffexplain.__version__}" in printed and f"device {device}" in printed
    assert "widget manager" not in printed and "google.colab" not in sys.modules
    assert colab.setup(quiet=True) == device and capsys.readouterr().out == ""


def test_setup_in_colab_turns_on_the_custom_widget_manager(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Colab cannot run here: a stand-in ``google.colab.output`` module records the call setup() makes."""
    calls: list[tuple] = []
    google, google_colab, output = (
        types.ModuleType(n) for n in ("google", "google.colab", "google.colab.output")
    )
    output.enable_custom_widget_manager = lambda *a, **k: calls.append((a, k))  # type: ignore[attr-defined]
    google_colab.output = output  # type: ignore[attr-defined]
    google.colab = google_colab  # type: ignore[attr-defined]
    for name, module in (("google", google), ("google.colab", google_colab), ("google.colab.output", output)):
        monkeypatch.setitem(sys.modules, name, module)
    assert colab.in_colab()
    colab.setup()
    assert calls == [((), {})]
    assert "Colab's custom widget manager is on" in capsys.readouterr().out
