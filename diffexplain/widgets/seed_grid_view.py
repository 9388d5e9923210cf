"""The anywidget GuidanceLab's seed grid (``lab.grid``): the counting of ``seed_grid.GridWork`` with Python
stand-ins for its cells and texts; the browser draws it from ``view()`` and ``pictures()``.

Its cells keep what ``ipywidgets.Image`` gave code and tests (``value``, ``tooltip``, ``layout.border``,
``add_class``/``remove_class``); its plot stays a plotly figure in Python (``fig``), which the browser
draws again as a small SVG from the same numbers. Each change tells the owner (``owner.grid_changed``),
which sends the grid to the browser once the change is done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import traitlets as T

from diffexplain import guidance_counts as counts
from diffexplain.widgets.seed_grid import GRID_HELP, NO_BORDER, RIGHT_BORDER, GridWork, sweep_figure
from diffexplain.widgets.stand_ins import Button, IntControl, Layout, Text

if TYPE_CHECKING:
    from diffexplain.guidance_counts import Column
    from diffexplain.widgets.guidance_lab import GuidanceLab


class Tile:
    """A grid cell: ``value`` (PNG bytes), ``tooltip``, ``layout.border`` and CSS classes (``dx-right``...)."""

    def __init__(self) -> None:
        self.value = b""
        self.tooltip: str | None = None
        self.comm = None  # not a widget (as a closed ipywidgets cell): nothing left in the kernel
        self.layout = Layout()
        self.layout.border = NO_BORDER  # type: ignore[attr-defined]
        self._dom_classes: list[str] = ["dx-grid-image"]  # as ipywidgets names them

    def add_class(self, name: str) -> None:
        """Add a CSS class (as ``ipywidgets.DOMWidget.add_class``)."""
        if name not in self._dom_classes:
            self._dom_classes.append(name)

    def remove_class(self, name: str) -> None:
        """Remove a CSS class."""
        if name in self._dom_classes:
            self._dom_classes.remove(name)


class SeedGrid(GridWork):
    """The seed grid, w sweep and method table of the anywidget :class:`GuidanceLab` (``lab.grid``)."""

    def __init__(self, owner: GuidanceLab, seeds: int = counts.DEFAULT_SEEDS) -> None:
        self.owner = owner
        self.layout = Layout()
        self.n_seeds = IntControl(max=48)
        self.n_seeds.min, self.n_seeds.value = 2, seeds
        self.count_button = Button("Count seeds")
        self.sweep_button = Button("Sweep w")
        self.compare_button = Button("Compare methods")
        self.methods_table, self.note, self.sweep_table = Text(), Text(), Text()
        sweep_text = ", ".join(f"{w:g}" for w in counts.SWEEP_SCALES)
        self.help = Text(GRID_HELP.format(n=seeds, sweep=sweep_text))
        self.titles: list[Text] = []
        self.count_labels: list[Text] = []
        self.images: list[list[Tile]] = []  # [column][seed]
        self.columns: list[Column | None] = [None, None, None]  # w = 0, 1, the chosen w
        self.sweep_columns: list[Column] = []
        self.fig = sweep_figure()
        self._cache: dict[tuple, Column] = {}
        self.count_button.on_click(owner.guard(lambda _: owner.start(self._count_work)))
        self.sweep_button.on_click(owner.guard(lambda _: owner.start(self._sweep_work)))
        self.compare_button.on_click(owner.guard(lambda _: owner.start(self._compare_work)))
        for text in (self.methods_table, self.note, self.sweep_table):
            text.observe(lambda _: owner.grid_changed(), names="value")
        self.clear()

    def buttons(self) -> list[Button]:
        """The grid's buttons (off while an action runs)."""
        return [self.count_button, self.sweep_button, self.compare_button]

    def _build_cells(self, n: int) -> None:
        self.titles = [Text() for _ in range(3)]
        self.count_labels = [Text("—") for _ in range(3)]
        self.images = [[Tile() for _ in range(n)] for _ in range(3)]

    def clear_grid(self) -> None:
        """Placeholders in every cell, no counts (see ``GridWork.clear_grid``)."""
        super().clear_grid()
        self.owner.grid_changed()

    def _show_column(self, i: int, column: Column) -> None:
        super()._show_column(i, column)
        self.owner.grid_changed()

    def _draw_sweep(self) -> None:
        super()._draw_sweep()
        self.owner.grid_changed()

    # ---- what the browser draws ------------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        """The grid as JSON (its pictures are ``pictures()``, keyed ``"c/j"``: column c, seed j)."""
        sweep = [
            {"name": s.name, "x": list(s.x or []), "y": [None if v is None else float(v) for v in s.y or []]}
            for s in self.fig.data
        ]
        columns = []
        for c, (title, label, tiles) in enumerate(
            zip(self.titles, self.count_labels, self.images, strict=True)
        ):
            cells = []
            for j, tile in enumerate(tiles):
                verdict = (
                    "right"
                    if "dx-right" in tile._dom_classes
                    else "wrong"
                    if "dx-wrong" in tile._dom_classes
                    else None
                )
                cells.append({"key": f"{c}/{j}", "verdict": verdict, "tooltip": tile.tooltip or ""})
            columns.append({"title": title.value, "count": label.value, "cells": cells})
        return {
            "shown": self.layout.display != "none",
            "help": self.help.value,
            "seeds": self.n_seeds.value,
            "note": self.note.value,
            "columns": columns,
            "sweep_table": self.sweep_table.value,
            "sweep": sweep if any(s["x"] for s in sweep) else [],
            "methods_table": self.methods_table.value,
            "right_border": RIGHT_BORDER,
        }

    def pictures(self) -> dict[str, bytes | None]:
        """Each cell's PNG (None: an empty cell; the browser then draws a grey square)."""
        return {
            f"{c}/{j}": (tile.value or None) if self.columns[c] is not None else None
            for c, tiles in enumerate(self.images)
            for j, tile in enumerate(tiles)
        }


class SeedText(T.HasTraits):
    """The seed box's stand-in: ``value`` (text; an int is taken), ``description``, ``.seed`` checked."""

    value = T.Union([T.Unicode(), T.Int()], default_value="0")

    def __init__(self, seed: str | int = 0, *, description: str = "seed") -> None:
        super().__init__(value=str(seed))
        self.description = description
        self.layout = Layout()

    @T.validate("value")
    def _as_text(self, proposal: dict) -> str:
        value = proposal["value"]
        return value if isinstance(value, str) else str(int(value))

    @property
    def seed(self) -> int:
        """The seed typed in the box (``InputError`` naming the box for anything else)."""
        from diffexplain.widgets.inputs import parse_seed

        return parse_seed(self.value, self.description)
