"""The teaching notebooks, copied out of the installed package: ``copy_to(folder)`` or ``diffexplain notebooks DIR``.

A wheel carries them as ``diffexplain/_notebooks/``; an editable install or a checkout reads the
repository's ``notebooks/`` folder. A notebook already in the target folder is never overwritten when it
differs from the shipped one (the user may have changed or run it) unless ``force=True``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

PACKAGED_DIR = Path(__file__).resolve().parent / "_notebooks"  # in an installed wheel
CHECKOUT_DIR = Path(__file__).resolve().parents[1] / "notebooks"  # an editable install or a checkout


class NotebooksChangedError(FileExistsError):
    """``copy_to`` found notebooks in the target folder that differ from the shipped ones; nothing was written."""

    def __init__(self, folder: Path, changed: list[str]) -> None:
        self.folder, self.changed = folder, changed
        super().__init__(
            f"{folder}: {len(changed)} notebook(s) there differ from the shipped ones and were kept: "
            f"{', '.join(changed)}. Nothing was written. Copy into another folder, or pass force=True "
            "(`--force` on the command line) to overwrite them."
        )


@dataclass
class CopyResult:
    """What ``copy_to`` did, file by file (names of notebooks, e.g. ``00_quickstart.ipynb``)."""

    folder: Path
    written: list[str] = field(default_factory=list)  # new in the folder
    overwritten: list[str] = field(default_factory=list)  # differed, replaced because force=True
    unchanged: list[str] = field(default_factory=list)  # already there, byte for byte the shipped one

    def summary(self) -> str:
        """One line per group, for the command line."""
        lines = [f"{self.folder}:"]
        for label, names in (
            ("written", self.written),
            ("overwritten (--force)", self.overwritten),
            ("already there, unchanged", self.unchanged),
        ):
            if names:
                lines.append(f"  {label}: {', '.join(names)}")
        return "\n".join(lines)


def source_dir() -> Path:
    """The folder the notebooks are read from: the installed package's copy, else the checkout's."""
    for folder in (PACKAGED_DIR, CHECKOUT_DIR):
        if folder.is_dir() and any(folder.glob("*.ipynb")):
            return folder
    raise FileNotFoundError(
        f"the teaching notebooks are missing: neither {PACKAGED_DIR} nor {CHECKOUT_DIR} holds any "
        "*.ipynb; reinstall diffexplain from its wheel or sdist"
    )


def names() -> list[str]:
    """The shipped notebooks' file names, in order (``00_quickstart.ipynb``, ...)."""
    return sorted(path.name for path in source_dir().glob("*.ipynb"))


def copy_to(folder: str | Path, *, force: bool = False) -> CopyResult:
    """Copy every teaching notebook into ``folder`` (created if missing) and say what was written.

    A notebook that is already there and differs from the shipped one is kept: then nothing at all is
    written and :class:`NotebooksChangedError` lists them, unless ``force=True`` overwrites them.
    """
    target = Path(folder).expanduser()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"folder={str(folder)!r}: a file is in the way (expected a folder)")
    source = source_dir()
    result = CopyResult(folder=target)
    plan: list[tuple[Path, Path]] = []
    for name in names():
        shipped, there = source / name, target / name
        if there.is_dir():
            raise IsADirectoryError(f"{there}: a folder is in the way of the notebook {name}")
        if not there.exists():
            result.written.append(name)
        elif there.read_bytes() == shipped.read_bytes():
            result.unchanged.append(name)
            continue
        else:
            result.overwritten.append(name)
        plan.append((shipped, there))
    if result.overwritten and not force:
        raise NotebooksChangedError(target, result.overwritten)
    target.mkdir(parents=True, exist_ok=True)
    for shipped, there in plan:
        shutil.copyfile(shipped, there)
    return result
