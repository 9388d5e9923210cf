"""Write the "Open in Colab" badge and the setup cell at the top of the teaching notebooks.

Both come from ONE setting, ``[tool.diffexplain]`` in pyproject.toml: ``github`` (owner/name of the
public repository) and ``ref`` (branch or tag). The badge opens the notebook from that repository in
Colab; the setup cell installs diffexplain from it when diffexplain is missing. Change the setting, then
run this script again.

    python scripts/notebook_setup_cell.py                  # every notebook in notebooks/
    python scripts/notebook_setup_cell.py notebooks/05_*.ipynb
    python scripts/notebook_setup_cell.py --check          # exit 1 and name the notebooks not up to date

The badge becomes the notebook's first cell and the setup cell its first code cell (after the title and
introduction). Idempotent: the two cells have fixed ids (``colab-badge``, ``setup``); older copies are
removed wherever they are, and a notebook already up to date is not rewritten.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO / "notebooks"
BADGE_ID, SETUP_ID = "colab-badge", "setup"

BADGE = (
    "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
    "(https://colab.research.google.com/github/{github}/blob/{ref}/notebooks/{name})"
)

SETUP = '''\
# Setup: installs diffexplain where it is missing (Colab, a fresh Jupyter), keeping the
# runtime's own ipywidgets (Colab's 7.x: upgrading it would need a restart). In Colab,
# setup() turns on the widget manager the widgets need.
import importlib.metadata
import importlib.util

if importlib.util.find_spec("diffexplain") is None:  # a minute or two, once per runtime
    have = importlib.util.find_spec("ipywidgets")
    keep = f"ipywidgets=={{importlib.metadata.version('ipywidgets')}}" if have else ""
    %pip install -q --upgrade-strategy only-if-needed {{keep}} "{install}"
    importlib.invalidate_caches()

from diffexplain.colab import setup

DEVICE = setup()  # "cuda" when there is a GPU, else "cpu"'''


def settings(pyproject: Path = REPO / "pyproject.toml") -> dict[str, str]:
    """``[tool.diffexplain]`` of pyproject.toml: ``github`` (owner/name) and ``ref``."""
    table = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {}).get("diffexplain", {})
    for key in ("github", "ref"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise SystemExit(f'{pyproject}: [tool.diffexplain] needs {key} = "..." (got {table.get(key)!r})')
    if table["github"].count("/") != 1:
        raise SystemExit(
            f"{pyproject}: [tool.diffexplain] github must be owner/name, got {table['github']!r}"
        )
    return {"github": table["github"], "ref": table["ref"]}


def install_source(config: dict[str, str]) -> str:
    """What the setup cell gives ``pip install``: the package from the repository at ``ref``."""
    return f"diffexplain @ git+https://github.com/{config['github']}@{config['ref']}"


def top_cells(name: str, config: dict[str, str]) -> list[nbformat.NotebookNode]:
    """The badge (markdown) and the setup cell (code) that open the notebook ``name``."""
    badge = nbformat.v4.new_markdown_cell(BADGE.format(name=name, **config))
    setup = nbformat.v4.new_code_cell(SETUP.format(install=install_source(config)))
    badge.id, setup.id = BADGE_ID, SETUP_ID
    return [badge, setup]


def with_top_cells(nb: nbformat.NotebookNode, name: str, config: dict[str, str]) -> nbformat.NotebookNode:
    """A copy of ``nb`` with the badge as its first cell and the setup cell as its first code cell."""
    new = nbformat.from_dict(nb)
    badge, setup = top_cells(name, config)
    rest = [cell for cell in new.cells if cell.get("id") not in {BADGE_ID, SETUP_ID}]
    first_code = next((i for i, cell in enumerate(rest) if cell.cell_type == "code"), len(rest))
    new.cells = [badge, *rest[:first_code], setup, *rest[first_code:]]
    return new


def update(path: Path, config: dict[str, str], *, check: bool = False) -> bool:
    """Bring one notebook up to date (or only look, with ``check``); True when it was (or would be) changed."""
    before = path.read_text(encoding="utf-8")
    nb = nbformat.reads(before, as_version=4)
    after = nbformat.writes(with_top_cells(nb, path.name, config)) + "\n"
    if after == before:
        return False
    if not check:
        path.write_text(after, encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb")
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if any is not up to date"
    )
    args = parser.parse_args(argv)
    config = settings()
    paths = args.notebooks or sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    for path in paths:
        if path.suffix != ".ipynb" or not path.is_file():
            parser.error(f"{path}: not a notebook file")
    changed = [path for path in paths if update(path, config, check=args.check)]
    verb = "not up to date" if args.check else "updated"
    for path in changed:
        print(f"{verb}: {path}")
    print(
        f"{len(changed)} of {len(paths)} notebook(s) {verb}; badge and install source: {install_source(config)}"
    )
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
