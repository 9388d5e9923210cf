"""MkDocs hooks of the diffexplain site (``hooks:`` in mkdocs.yml); the checks are shared with tests/test_docs.py.

- The notebooks in ``notebooks/`` become pages (rendered by mkdocs-jupyter, never executed) without
  being copied or symlinked: ``on_files`` adds them as files whose source folder is the repository.
- ``notebook:NN`` links in the Markdown pages point at the notebook whose name starts with ``NN_``,
  so a page keeps working when a notebook is renamed; a missing notebook is a warning (an error
  under ``--strict``).
- A public name without a docstring, or a hook-point table that differs from
  ``diffexplain.names.HOOK_POINTS``, is a warning too (an error under ``--strict``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.diffexplain")

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
NOTEBOOK_URI = "notebooks"  # where the notebooks live among the site's pages
HOOK_POINTS_PAGE = "hook-points.md"

# Public API whose every name must carry a docstring: modules and the classes whose methods must too.
API_MODULES = ("diffexplain", "diffexplain.widgets", "diffexplain.interventions")
API_CLASSES = ("diffexplain.Explainer", "diffexplain.Trace")

_NOTEBOOK_LINK = re.compile(r"\[([^\]]*)\]\(notebook:(\d{2})\)")


# ---- notebooks ------------------------------------------------------------------------------------
def notebook_files() -> list[Path]:
    """The notebooks the site renders: ``notebooks/*.ipynb``, sorted by name."""
    if not NOTEBOOKS_DIR.is_dir():
        return []
    return sorted(p for p in NOTEBOOKS_DIR.glob("*.ipynb") if p.is_file())


def find_notebook(number: str) -> Path | None:
    """The notebook whose file name starts with ``NN_`` (e.g. ``"03"``), or None."""
    for path in notebook_files():
        if path.name.startswith(f"{number}_"):
            return path
    return None


def notebook_title(path: Path) -> str:
    """The first level-1 heading of a notebook's Markdown cells, else its file name in words."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError):
        cells = []
    for cell in cells:
        if cell.get("cell_type") != "markdown":
            continue
        source = cell.get("source", "")
        text = "".join(source) if isinstance(source, list) else str(source)
        for line in text.splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return path.stem.replace("_", " ")


def notebook_label(path: Path) -> str:
    """``NN · title`` for a notebook (its title already starts so in most notebooks)."""
    number, title = path.name[:2], notebook_title(path)
    return title if title.startswith(number) else f"{number} · {title}"


# ---- docstrings -----------------------------------------------------------------------------------
def _where(obj: Any) -> str:
    """``diffexplain/file.py: name`` for a griffe object (its defining file, relative to the repo)."""
    target = obj.final_target if getattr(obj, "is_alias", False) else obj
    try:
        path = Path(target.filepath).resolve().relative_to(REPO_ROOT)
    except (ValueError, AttributeError, TypeError):
        path = Path(str(getattr(target, "filepath", "?")))
    return f"{path.as_posix()}: {target.path.split('.', 1)[-1] if target.is_module else _qualname(target)}"


def _qualname(obj: Any) -> str:
    """Class.method or name, without the module path."""
    return obj.path[len(obj.module.path) + 1 :]


def _public_names(module: Any) -> list[str]:
    """``__all__`` of a griffe module; without one, its public functions and classes defined there."""
    exports = getattr(module, "exports", None)
    if exports:
        return [str(getattr(name, "name", name)) for name in exports]
    return [
        name
        for name, member in module.members.items()
        if not name.startswith("_") and not member.is_alias and (member.is_function or member.is_class)
    ]


def missing_docstrings() -> list[str]:
    """Public names without a docstring, as ``file: name``.

    Checked: every name in ``__all__`` of ``diffexplain``, ``diffexplain.widgets`` and
    ``diffexplain.interventions`` (its public functions and classes while it has no ``__all__``),
    and every public method and property of ``Explainer`` and ``Trace``. Read statically with griffe,
    exactly as the API pages are rendered.
    """
    import griffe

    package = griffe.load("diffexplain", search_paths=[str(REPO_ROOT)], resolve_aliases=True)
    missing: list[str] = []
    seen: set[str] = set()

    def check(obj: Any) -> None:
        target = obj.final_target if obj.is_alias else obj
        if target.path in seen:
            return
        seen.add(target.path)
        if not (target.docstring and target.docstring.value.strip()):
            missing.append(_where(target))

    for module_path in API_MODULES:
        module = (
            package if module_path == "diffexplain" else package[module_path.removeprefix("diffexplain.")]
        )
        for name in _public_names(module):
            if name.startswith("__") and name.endswith("__"):
                continue  # __version__ and friends
            if name not in module.members:
                missing.append(f"{module_path}.__all__: {name} (not defined)")
                continue
            check(module.members[name])
    for class_path in API_CLASSES:
        cls = package[class_path.removeprefix("diffexplain.")]
        cls = cls.final_target if cls.is_alias else cls
        for name, member in cls.members.items():
            if name.startswith("_") or member.is_alias:
                continue
            if member.is_function or "property" in member.labels:
                check(member)
    return missing


# ---- the hook-point table -------------------------------------------------------------------------
def hook_point_rows(markdown: str) -> list[tuple[str, str, str, str]]:
    """(name, tensor, shape, when) of each row of the hook-point table (rows whose first cell is `a.b`)."""
    rows = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"`[a-z0-9_.]+`", cells[0]):
            rows.append((cells[0].strip("`"), cells[1], cells[2], cells[3]))
    return rows


def hook_points() -> tuple[Any, ...]:
    """``diffexplain.names.HOOK_POINTS``, read from ``names.py`` alone (without importing torch)."""
    name = "_diffexplain_docs_names"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "diffexplain" / "names.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name].HOOK_POINTS


def family_points(name: str) -> tuple[Any, ...] | None:
    """The hook points a model family adds (``diffexplain.families.FAMILIES[name].extra_points``); None for
    a page under families/ that is no family's own (lcm.md: LCM runs through the SD family)."""
    from diffexplain.families import FAMILIES  # imports torch: only for the family pages

    return FAMILIES[name].extra_points if name in FAMILIES else None


def hook_table_problems(markdown: str, points: tuple[Any, ...] | None = None) -> list[str]:
    """Differences between the page's hook-point table and ``points`` (default ``names.HOOK_POINTS``)."""
    HOOK_POINTS = hook_points() if points is None else points
    rows = hook_point_rows(markdown)
    problems = []
    names = [r[0] for r in rows]
    expected = [p.name for p in HOOK_POINTS]
    if names != expected:
        extra = [n for n in names if n not in expected]
        absent = [n for n in expected if n not in names]
        problems.append(
            f"hook-point table names differ from HOOK_POINTS (order included): extra {extra}, missing {absent}"
        )
    for point in HOOK_POINTS:
        for name, tensor, shape, when in rows:
            if name != point.name:
                continue
            want_when = "every step" if point.per_step else "once per run"
            if (tensor, shape, when) != (point.tensor, point.shape, want_when):
                problems.append(
                    f"row {name!r}: page says ({tensor!r}, {shape!r}, {when!r}), "
                    f"HOOK_POINTS says ({point.tensor!r}, {point.shape!r}, {want_when!r})"
                )
    return problems


# ---- mkdocs events --------------------------------------------------------------------------------
def on_config(config: Any) -> Any:
    """Add a Notebooks section to the navigation (one entry per notebook) and watch the notebooks."""
    entries = [{notebook_label(p): f"{NOTEBOOK_URI}/{p.name}"} for p in notebook_files()]
    if entries and config.nav is not None:
        config.nav = [item for item in config.nav if not (isinstance(item, dict) and "Notebooks" in item)]
        config.nav.append({"Notebooks": entries})
    if not entries:
        log.warning("no notebooks found in %s: the Notebooks section is empty", NOTEBOOKS_DIR)
    for folder in (NOTEBOOKS_DIR, REPO_ROOT / "diffexplain"):
        if folder.is_dir() and str(folder) not in config.watch:
            config.watch.append(str(folder))
    return config


def on_pre_build(config: Any) -> None:
    """Warn (an error under --strict) about every public name without a docstring."""
    for entry in missing_docstrings():
        log.warning("missing docstring: %s", entry)


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns .ipynb files into pages
def on_files(files: Files, config: Any) -> Files:
    """Add ``notebooks/*.ipynb`` of the repository as pages under ``notebooks/``."""
    for path in notebook_files():
        uri = f"{NOTEBOOK_URI}/{path.name}"
        if files.get_file_from_path(uri) is None:
            files.append(
                File(
                    uri,
                    src_dir=str(REPO_ROOT),
                    dest_dir=config.site_dir,
                    use_directory_urls=config.use_directory_urls,
                )
            )
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Resolve ``notebook:NN`` links; check the hook-point table against the code."""
    depth = page.file.src_uri.count("/")

    def link(match: re.Match[str]) -> str:
        text, number = match.group(1), match.group(2)
        path = find_notebook(number)
        if path is None:
            log.warning(
                "%s links to notebook %s, but notebooks/%s_*.ipynb does not exist",
                page.file.src_uri,
                number,
                number,
            )
            return text or f"notebook {number}"
        label = text or f"Notebook {notebook_label(path)}"
        return f"[{label}]({'../' * depth}{NOTEBOOK_URI}/{path.name})"

    markdown = _NOTEBOOK_LINK.sub(link, markdown)
    if page.file.src_uri == HOOK_POINTS_PAGE:
        for problem in hook_table_problems(markdown):
            log.warning("%s: %s", HOOK_POINTS_PAGE, problem)
    family = re.fullmatch(r"families/([a-z0-9]+)\.md", page.file.src_uri)
    points = family_points(family.group(1)) if family and family.group(1) != "index" else None
    if points is not None:
        for problem in hook_table_problems(markdown, points):
            log.warning("%s: %s", page.file.src_uri, problem)
    return markdown
