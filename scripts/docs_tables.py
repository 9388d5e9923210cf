"""Write the tables that docs/ generates from the code's declarations (the hook points, the per-step
scalars, each family's own hook points) between their ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->`` markers.

    python scripts/docs_tables.py          # rewrite them
    python scripts/docs_tables.py --check  # exit 1 where a table is not current (tests/test_docs.py)

A family page ``docs/families/<page>.md`` that holds the markers ``<!-- generated: points-<family> -->``
and ``<!-- end: points-<family> -->`` gets the family's own hook points (``Family.extra_points``, with their
shapes) written between them, ``<family>`` being its short name (``Family.name``).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
sys.path.insert(0, str(DOCS.parent))  # this checkout's diffexplain, not another one installed (a worktree's)


def tables() -> dict[str, tuple[Path, str]]:
    """Each generated table: its marker name → (the docs file, the table's markdown)."""
    from diffexplain.names import BLEND_POINTS, HOOK_POINTS, IMAGE_POINTS, INPAINT_POINTS, markdown_table
    from diffexplain.scheduler_outputs import SCHEDULER_OUTPUTS
    from diffexplain.step_scalars import STEP_SCALARS, scalars_table

    found = {
        "hook-points": (DOCS / "hook-points.md", markdown_table(HOOK_POINTS)),
        "image-points": (DOCS / "guides" / "start-from-a-picture.md", markdown_table(IMAGE_POINTS)),
        "inpaint-points": (
            DOCS / "guides" / "start-from-a-picture.md",
            markdown_table((*INPAINT_POINTS, *BLEND_POINTS)),
        ),
        "step-scalars": (DOCS / "hook-points.md", scalars_table(STEP_SCALARS)),
        "scheduler-points": (  # the points a scheduler's step output adds (LCM's denoised)
            DOCS / "families" / "lcm.md",
            markdown_table(o.point for outputs in SCHEDULER_OUTPUTS.values() for o in outputs),
        ),
    }
    return found | family_tables()


def family_tables() -> dict[str, tuple[Path, str]]:
    """``points-<family>`` for each family page that has its markers (module docstring)."""
    from diffexplain.families import FAMILIES
    from diffexplain.names import markdown_table

    found = {}
    for page in sorted((DOCS / "families").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for family in FAMILIES.values():
            name = f"points-{family.name}"
            if f"<!-- generated: {name} -->" in text:
                found[name] = (page, markdown_table(family.extra_points))
    return found


def block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- generated: {name} -->\n)(.*?)(\n<!-- end: {name} -->)", re.S)


def stale() -> list[str]:
    """The names of the tables whose docs text differs from what the code declares."""
    found = []
    for name, (path, table) in tables().items():
        match = block(name).search(path.read_text(encoding="utf-8"))
        if match is None or match.group(2) != table:
            found.append(f"{name} ({path.relative_to(DOCS.parent)})")
    return found


def write() -> None:
    for name, (path, table) in tables().items():
        text = path.read_text(encoding="utf-8")
        if block(name).search(text) is None:
            raise SystemExit(f"{path}: no <!-- generated: {name} --> ... <!-- end: {name} --> markers")
        path.write_text(
            block(name).sub(lambda m, t=table: m.group(1) + t + m.group(3), text), encoding="utf-8"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale tables (exit 1)")
    if parser.parse_args().check:
        found = stale()
        if found:
            print("stale generated tables:", ", ".join(found), "- run python scripts/docs_tables.py")
            sys.exit(1)
        return
    write()


if __name__ == "__main__":
    main()
