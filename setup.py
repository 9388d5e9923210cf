"""Build step: the wheel carries the teaching notebooks (``notebooks/*.ipynb``) as ``diffexplain/_notebooks/``.

Everything else about the package is declared in pyproject.toml. The notebooks stay at the repository's
top level, where the tests and the docs read them; ``diffexplain.notebooks`` finds them either here (an
editable install or a checkout) or in the installed package.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
TARGET = Path("diffexplain") / "_notebooks"  # inside the built package


class build_py_with_notebooks(build_py):  # noqa: N801 - setuptools' command naming
    """``build_py`` that also copies ``notebooks/*.ipynb`` into the built package (not in editable mode)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads notebooks/ in place
        found = sorted(NOTEBOOKS.glob("*.ipynb"))
        if not found:
            raise FileNotFoundError(f"no notebooks in {NOTEBOOKS}: the package would ship without them")
        target = Path(self.build_lib) / TARGET
        target.mkdir(parents=True, exist_ok=True)
        for path in found:
            shutil.copyfile(path, target / path.name)


setup(cmdclass={"build_py": build_py_with_notebooks})
