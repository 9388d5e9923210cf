"""The documentation site: hook-point table, notebook links, docstrings, screenshots, and the strict build.

The checks shared with the build live in ``docs/hooks/diffexplain_docs.py`` (the MkDocs hooks file), so
``mkdocs build --strict`` and these tests fail for the same reasons.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

# Each concept page and the notebooks it must link to (as ``notebook:NN``).
CONCEPT_NOTEBOOKS = {
    "concepts/same-network.md": ("00", "03"),
    "concepts/forward-process.md": ("01",),
    "concepts/predicting-noise.md": ("02",),
    "concepts/sampling-loop.md": ("03",),
    "concepts/text-conditioning.md": ("04",),
    "concepts/guidance.md": ("05", "12"),
    "concepts/latent-space.md": ("06",),
    "concepts/cross-attention.md": ("09",),
    "concepts/two-dialects.md": ("13",),
}


def _docs_hooks():
    """The MkDocs hooks module, imported from its file."""
    name = "diffexplain_docs_hooks"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DOCS / "hooks" / "diffexplain_docs.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def docs_hooks():
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    return _docs_hooks()


def _table_names(markdown: str) -> list[str]:
    """First-column names (in backticks) of the 4-column table rows of a page."""
    names = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and (m := re.fullmatch(r"`([a-z0-9_.]+)`", cells[0])):
            names.append(m.group(1))
    return names


def test_hook_point_table_lists_exactly_the_hook_points():
    from diffexplain.names import HOOK_POINTS

    names = _table_names((DOCS / "hook-points.md").read_text(encoding="utf-8"))
    expected = [p.name for p in HOOK_POINTS]
    assert sorted(set(names)) == sorted(expected), (
        f"extra in the docs: {sorted(set(names) - set(expected))}, "
        f"missing from the docs: {sorted(set(expected) - set(names))}"
    )
    assert names == expected, "the table should list the hook points once each, in HOOK_POINTS order"


def test_hook_point_table_rows_match_the_code(docs_hooks):
    markdown = (DOCS / "hook-points.md").read_text(encoding="utf-8")
    assert docs_hooks.hook_table_problems(markdown) == []


@pytest.mark.parametrize("page", sorted(CONCEPT_NOTEBOOKS))
def test_concept_page_links_its_notebook(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    for number in CONCEPT_NOTEBOOKS[page]:
        assert f"](notebook:{number})" in text, (
            f"{page} should link to notebook {number} as [...](notebook:{number})"
        )
        found = sorted((REPO / "notebooks").glob(f"{number}_*.ipynb"))
        assert found, f"{page} links to notebook {number}, but notebooks/{number}_*.ipynb does not exist"


def test_every_concept_page_is_covered():
    pages = {p.relative_to(DOCS).as_posix() for p in (DOCS / "concepts").glob("*.md")} - {"concepts/index.md"}
    assert pages == set(CONCEPT_NOTEBOOKS)


def test_notebook_links_resolve(docs_hooks):
    missing = []
    for page in sorted(DOCS.rglob("*.md")):
        for number in re.findall(r"\]\(notebook:(\d{2})\)", page.read_text(encoding="utf-8")):
            if docs_hooks.find_notebook(number) is None:
                missing.append(f"{page.relative_to(DOCS)} -> notebooks/{number}_*.ipynb")
    assert not missing, missing


def test_public_names_have_docstrings(docs_hooks):
    pytest.importorskip("griffe", reason="griffe is not installed (pip install -e '.[docs]')")
    missing = docs_hooks.missing_docstrings()
    assert not missing, "public names without a docstring:\n" + "\n".join(missing)


def test_public_names_exist():
    import diffexplain
    import diffexplain.interventions
    import diffexplain.widgets

    for module in (diffexplain, diffexplain.widgets):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.__all__ names {name!r}, which is not defined"
    for name in getattr(diffexplain.interventions, "__all__", []):
        assert hasattr(diffexplain.interventions, name), name


def test_widgets_page_shows_every_widget():
    import diffexplain.widgets

    text = (DOCS / "widgets.md").read_text(encoding="utf-8")
    for name in diffexplain.widgets.__all__:
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
        assert f"## {name}" in text, f"widgets.md has no section for {name}"
        assert f"(assets/screenshots/{snake}.png)" in text, f"widgets.md shows no screenshot of {name}"
        assert (DOCS / "assets" / "screenshots" / f"{snake}.png").is_file(), f"missing screenshot {snake}.png"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    for plugin in ("material", "mkdocstrings", "mkdocs_jupyter"):
        if importlib.util.find_spec(plugin) is None:
            pytest.skip(f"{plugin} is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--quiet",
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert result.returncode == 0, (
        f"mkdocs build --strict failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    )
    assert (tmp_path / "site" / "hook-points" / "index.html").is_file()


FAMILY_PAGES = {
    "sd": "sd",
    "sdxl": "sdxl",
    "sd3": "sd3",
    "flux": "flux",
    "flux2_klein": "flux2",
    "flux2": "flux2",
    "chroma": "chroma",
    "z_image": "z-image",
    "qwen_image": "qwen-image",
    "sana": "sana",
    "sana_sprint": "sana",
    "flux3": "flux3",
    "flux3-distilled": "flux3",
    "if": "if",
    "if_sr": "if",
    "kandinsky_prior": "kandinsky",
    "kandinsky": "kandinsky",
}
"""Each family's page in docs/families/ (a page may hold several families)."""
STAGE_PREFIX = {"if_sr": "II.", "kandinsky_prior": "prior."}
"""Cascade stages whose pages name their points as a cascade does (``II.prompt.image.cond``)."""


def test_every_family_has_a_page():
    from diffexplain.families import FAMILIES

    assert sorted(set(FAMILIES) - set(FAMILY_PAGES)) == [], "add the family's page to FAMILY_PAGES"


@pytest.mark.parametrize("family", list(FAMILY_PAGES))
def test_each_family_page_lists_exactly_its_hook_points(docs_hooks, family):
    """Its page names its own hook points (a generated table, kept current by scripts/docs_tables.py, or
    a hand-written one checked here) and the families index links it beside its pipeline's name."""
    from diffexplain.families import FAMILIES

    page = FAMILY_PAGES[family]
    markdown = (DOCS / "families" / f"{page}.md").read_text(encoding="utf-8")
    points = FAMILIES[family].extra_points
    if family in STAGE_PREFIX:
        missing = [p.name for p in points if f"`{STAGE_PREFIX[family]}{p.name}`" not in markdown]
        assert missing == [], f"{page}.md does not name {missing}"
    elif f"<!-- generated: points-{family} -->" not in markdown and points:
        assert docs_hooks.hook_table_problems(markdown, points) == []
    index = (DOCS / "families" / "index.md").read_text(encoding="utf-8")
    assert f"`{FAMILIES[family].pipeline_class}`" in index and f"]({page}.md" in index


def _markdown_of_notebook(path: Path) -> str:
    import json

    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells)


def test_load_default_is_imported_from_one_place():
    """README, docs and notebooks import the embedded model as ``from diffexplain import load_default``."""
    texts = {p: p.read_text(encoding="utf-8") for p in [REPO / "README.md", *DOCS.rglob("*.md")]}
    texts |= {p: _markdown_of_notebook(p) for p in (REPO / "notebooks").glob("*.ipynb")}
    other = [
        str(p.relative_to(REPO)) for p, text in texts.items() if "models.default import load_default" in text
    ]
    assert other == [], f"import load_default from diffexplain, not diffexplain.models.default: {other}"
    assert "from diffexplain import load_default" in texts[REPO / "README.md"]


def test_the_quickstart_names_every_widget_and_notebook():
    import diffexplain.widgets

    intro = _markdown_of_notebook(REPO / "notebooks" / "00_quickstart.ipynb").split("\n## ")[0]  # the top
    missing = [w for w in diffexplain.widgets.__all__ if f"`{w}`" not in intro]
    assert missing == [], f"the quickstart's widget table leaves out {missing}"
    numbers = sorted(p.name[:2] for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))[1:]  # 00 is itself
    course = intro[intro.index("**The course:**") :]
    assert [n for n in numbers if not re.search(rf"\b{n} ", course)] == []


def test_notebook_plots_with_a_second_y_axis_give_it_its_own_ticks():
    """An overlaying axis without tickmode puts its ticks on the left axis's grid lines in plotly.js
    (notebook 05's diversity axis read 0.012 / 0.3 / 0.588 on 0–0.6), and the default legend sits on its title."""
    import json

    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            src = "".join(cell["source"])
            if cell["cell_type"] == "code" and "overlaying=" in src:
                assert "tickmode=" in src and "legend=" in src, f"{path.name}: {src[:200]}"


def test_generated_tables_are_current():
    """The hook-point and step-scalar tables are written from the declarations (scripts/docs_tables.py)."""
    result = subprocess.run(
        [sys.executable, str(DOCS.parent / "scripts" / "docs_tables.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
