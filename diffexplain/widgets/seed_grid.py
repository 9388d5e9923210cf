"""GuidanceLab's seed grid: many seeds at w = 0, w = 1 and the chosen w, each picture checked, each column
counted; and a w sweep plotting the right share and the pictures' diversity against w.

The counting lives in :mod:`diffexplain.guidance_counts`; this panel draws it. Its runs go through the
owning widget's ``start`` (buttons off, Stop on, one loop step per turn of the kernel's event loop) and
feed the owner's progress bar over all the grid's steps.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import ipywidgets as W

from diffexplain import guidance_counts as counts
from diffexplain.widgets.base import LiveFigure, Work, _escape, blank, button, figure_box, png

if TYPE_CHECKING:
    from PIL import Image

    from diffexplain.guidance_counts import Column
    from diffexplain.widgets.guidance_lab import GuidanceLab

TILE = 64  # grid picture width in pixels
RIGHT_BORDER = "3px solid #1a9850"  # green: the checker read the prompt's scene
WRONG_BORDER = "3px solid #d73027"  # red: something is missing or wrong
NO_BORDER = "3px solid transparent"  # no verdict (no checker, or not run yet)
GRID_HELP = (
    "<b>Count seeds</b> draws the same prompt from {n} seeds (starting at the seed box) three times: "
    "with <b>no prompt (w = 0</b>, ε̂ = ε_u), with the prompt and guidance off (<b>w = 1</b>, ε̂ = ε_c) and "
    "at the slider's <b>w</b>. A green border: the attribute checker read the prompt's objects, colours "
    "and places in the picture; red: it did not. <b>Sweep w</b> counts the same seeds at w = {sweep} and "
    "plots the share right and the diversity (mean pairwise pixel distance) against w. <b>Compare methods</b> "
    "counts the same seeds at the chosen w under each guidance method (the <b>method</b> menu's), with how "
    "saturated the pictures are: the share of coloured pixels at the gamut's edge, and their mean chroma. "
    "Try 10 steps."
)


def sweep_figure() -> LiveFigure:
    """The w sweep's plot: share right (left axis) and diversity (right axis) against w."""
    fig = LiveFigure()
    fig.add_scatter(x=[], y=[], name="share right", mode="lines+markers", yaxis="y")
    fig.add_scatter(x=[], y=[], name="diversity", mode="lines+markers", yaxis="y2")
    fig.update_layout(
        height=260,
        margin={"l": 50, "r": 60, "t": 30, "b": 40},
        title={"text": "the same seeds at every w", "font": {"size": 13}},
        xaxis_title="guidance scale w",
        yaxis={"title": "share right", "range": [-0.02, 1.02], "dtick": 0.25},
        yaxis2={
            "title": "diversity",
            "overlaying": "y",
            "side": "right",
            "range": [0, 0.6],
            "dtick": 0.1,
            "showgrid": False,
        },
        legend={"orientation": "h", "y": -0.3},
    )
    return fig


class GridWork:
    """The seed grid's counting and drawing, whatever draws its cells: ``SeedGridPanel`` (ipywidgets) and
    ``diffexplain.widgets.seed_grid_view.SeedGrid`` (the anywidget lab's stand-ins) give ``owner``,
    ``n_seeds``, ``note``, ``titles``, ``count_labels``, ``images`` (cells with ``value``, ``tooltip``,
    ``layout.border``, ``add_class``/``remove_class``), ``sweep_table``, ``methods_table``, ``fig`` and
    ``_cache``, and ``_build_cells(n)``."""

    owner: GuidanceLab
    _cache: dict[tuple, Column]

    # ---- settings read from the owner ---------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """What the grid runs: the owner's prompt, first seed, steps and negative prompt, and its seed count."""
        owner = self.owner
        return {
            "prompt": owner.prompt.value,
            "negative_prompt": owner.negative_prompt,
            "num_inference_steps": int(owner.steps.value),
            "seeds": counts.seed_list(int(self.n_seeds.value), owner.seed.seed),
        }

    def chosen_scale(self) -> float:
        """The third column's w: the slider's, or the guided run's when the slider is at w ≤ 1."""
        w = float(self.owner.scale.value)
        return w if w > 1 else self.owner.on.run_settings.guidance_scale if self.owner.on else 5.0

    # ---- actions --------------------------------------------------------------------------------------
    def count(self) -> None:
        """Run the seed grid now (w = 0, 1 and the chosen w), the owner's buttons off meanwhile."""
        self.owner.finish(self._count_work())

    def run_sweep(self) -> None:
        """Run the w sweep now (:data:`~diffexplain.guidance_counts.SWEEP_SCALES`)."""
        self.owner.finish(self._sweep_work())

    def compare_methods(self) -> None:
        """Count the seeds at the chosen w under every guidance method of the owner's menu, into a table."""
        self.owner.finish(self._compare_work())

    def _columns_work(
        self, scales: list[float], what: str, shown: Any, methods: list[str] | None = None
    ) -> Work:
        """Each scale's column (from the cache when these settings ran before); ``shown(i, col)`` draws it.
        ``methods``: the guidance method of each (the owner's menu labels); default the owner's chosen one
        for w > 1 (w ≤ 1 has no guidance to choose)."""
        owner, run = self.owner, self.settings()
        scene, why = counts.checker_scene(owner.explainer, run["prompt"])
        if methods is None:
            methods = [owner.method.value] * len(scales)
        methods = [m if w > 1 else None for w, m in zip(scales, methods, strict=True)]
        todo = [w for w, m in zip(scales, methods, strict=True) if self._key(run, w, m) not in self._cache]
        per_run = counts.loop_step_count(owner.explainer, run["num_inference_steps"])
        batch = counts.default_batch_size(owner.explainer)
        batches = -(-len(run["seeds"]) // batch)
        owner.progress.max, owner.progress.value = max(1, len(todo) * batches * per_run), 0
        self.note.value = self._note(why)

        def tick() -> None:
            owner.progress.value = min(owner.progress.value + 1, owner.progress.max)

        for i, (w, method) in enumerate(zip(scales, methods, strict=True)):
            key = self._key(run, w, method)
            if key not in self._cache:
                named = counts.scale_label(w) if method is None else f"{method}, {counts.scale_label(w)}"
                owner.say(f"{what}: {named}, {len(run['seeds'])} seeds ({i + 1} of {len(scales)}) …")
                self._cache[key] = yield from counts.column_steps(
                    owner.explainer,
                    run["prompt"],
                    w,
                    run["seeds"],
                    num_inference_steps=run["num_inference_steps"],
                    negative_prompt=run["negative_prompt"],
                    scene=scene,
                    batch_size=batch,
                    on_step=tick,
                    guider=None if method is None else owner.methods[method],
                )
            shown(i, self._cache[key])
        owner.progress.value = owner.progress.max
        return run

    def _count_work(self) -> Work:
        self.clear_grid()
        scales = [0.0, 1.0, self.chosen_scale()]
        run = yield from self._columns_work(scales, "counting", self._show_column)
        self.owner.say(self._summary(run, self.columns))

    def _compare_work(self) -> Work:
        self.methods_table.value = ""
        labels = list(self.owner.methods)
        w = self.chosen_scale()
        found: list[Column] = []
        run = yield from self._columns_work(
            [w] * len(labels), "comparing methods", lambda i, c: found.append(c), labels
        )
        self._draw_methods(labels, found, w)
        self.owner.say(self._summary(run, found))

    def _draw_methods(self, labels: list[str], columns: list[Column], w: float) -> None:
        """One row per method: its pictures of the same seeds side by side (a green or red frame: the checker's
        verdict), right, saturation (at the gamut's edge, mean chroma) and diversity."""
        head = "".join(
            f"<th>{h}</th>"
            for h in ("method", "the same seeds", "right", "at gamut edge", "mean chroma", "diversity")
        )
        rows = []
        for label, c in zip(labels, columns, strict=True):
            edge, chroma = c.saturation or (0.0, 0.0)
            rows.append(
                f"<tr><th style='text-align:left'>{_escape(label)}</th><td>{_thumbnails(c)}</td>"
                f"<td>{c.count_text}</td><td>{100 * edge:.1f} %</td><td>{chroma:.3f}</td>"
                f"<td>{c.diversity:.3f}</td></tr>"
            )
        self.methods_table.value = (
            f"<b>the same {columns[0].n if columns else 0} seeds at w = {w:g}, one guidance method per row</b>"
            "<table class='dx-methods' style='font-size:0.85em;border-spacing:10px 2px'>"
            f"<tr>{head}</tr>{''.join(rows)}</table>"
        )

    def _sweep_work(self) -> Work:
        self.clear_sweep()
        found: list[Column] = []
        run = yield from self._columns_work(
            list(counts.SWEEP_SCALES), "sweeping w", lambda i, c: found.append(c)
        )
        self.sweep_columns = found
        self._draw_sweep()
        self.owner.say(self._summary(run, found))

    # ---- drawing --------------------------------------------------------------------------------------
    def clear(self) -> None:
        """Empty the grid and the sweep (a new run of the owner: they belonged to the previous one)."""
        self.clear_grid()
        self.clear_sweep()
        self.note.value = ""

    def clear_grid(self) -> None:
        """Placeholders in every grid cell, no counts (the cells are built again only when the seed count changed)."""
        n = int(self.n_seeds.value)
        self.columns = [None, None, None]
        if not self.images or len(self.images[0]) != n:
            self._build_cells(n)
        empty = blank(TILE)
        for i, w in enumerate((0.0, 1.0, None)):
            self.titles[
                i
            ].value = f"<b>{counts.scale_label(w) if w is not None else 'guidance on (chosen w)'}</b>"
            self.count_labels[i].value = "—"
            for image in self.images[i]:
                image.value, image.tooltip, image.layout.border = empty, None, NO_BORDER
                image.remove_class("dx-right")
                image.remove_class("dx-wrong")

    def clear_sweep(self) -> None:
        """No sweep: an empty plot and table."""
        self.sweep_columns = []
        self.sweep_table.value = ""
        self.methods_table.value = ""
        with self.fig.batch_update():
            for series in self.fig.data:
                series.x, series.y = [], []

    def forget(self) -> None:
        """Drop the cached columns (they are kept while prompt, seeds and steps stay the same)."""
        self._cache.clear()

    def _show_column(self, i: int, column: Column) -> None:
        self.columns[i] = column
        self.titles[i].value = f"<b>{column.label}</b>"
        self.count_labels[i].value = f"<b>{column.count_text}</b>"
        for j, (image, picture) in enumerate(zip(self.images[i], column.images, strict=False)):
            image.value = png(_tile(picture))
            image.remove_class("dx-right")
            image.remove_class("dx-wrong")
            if column.verdicts is None:
                image.layout.border = NO_BORDER
                image.tooltip = f"seed {column.seeds[j]}"
            else:
                right = column.verdicts[j]
                image.layout.border = RIGHT_BORDER if right else WRONG_BORDER
                image.add_class("dx-right" if right else "dx-wrong")
                image.tooltip = f"seed {column.seeds[j]}: the checker read {column.readings[j]}"

    def _draw_sweep(self) -> None:
        cols = self.sweep_columns
        scales = [c.guidance_scale for c in cols]
        with self.fig.batch_update():
            checked = cols and cols[0].share is not None
            self.fig.data[0].x, self.fig.data[0].y = (
                (scales, [c.share for c in cols]) if checked else ([], [])
            )
            self.fig.data[1].x, self.fig.data[1].y = scales, [c.diversity for c in cols]
        top = max([c.diversity for c in cols], default=0.0)
        self.fig.layout.yaxis2.range = [0, max(0.6, round(top * 1.15, 1))]
        self.fig.redraw()

        def row(name: str, cells: list[str]) -> str:
            return (
                f"<tr><th style='text-align:left'>{name}</th>"
                + "".join(f"<td>{c}</td>" for c in cells)
                + "</tr>"
            )

        right = [c.count_text.removesuffix(" right").replace(" pictures", "") for c in cols]
        self.sweep_table.value = (
            "<table style='font-size:0.85em;border-spacing:10px 0'>"
            + row("w", [f"w = {c.guidance_scale:g}" for c in cols])
            + row("right" if cols and cols[0].right is not None else "pictures", right)
            + row("diversity", [f"{c.diversity:.3f}" for c in cols])
            + "</table>"
        )

    def _note(self, why: str) -> str:
        if why:
            return f"<span style='color:#555'>{why}; the grid shows the pictures only.</span>"
        return (
            "<span style='color:#555'>border: <span style='color:#1a9850'>■ right</span> "
            "<span style='color:#d73027'>■ wrong</span> (the attribute checker's reading: hover a picture)</span>"
        )

    def _summary(self, run: dict[str, Any], columns: list[Column | None]) -> str:
        seeds = run["seeds"]
        parts = [f"{c.label}: {c.count_text}" for c in columns if c is not None]
        where = (
            f"“{_escape(run['prompt'])}”, seeds {seeds[0]}–{seeds[-1]}, {run['num_inference_steps']} steps"
        )
        return f"{where} · " + " · ".join(parts)

    def _key(self, run: dict[str, Any], w: float, method: str | None = None) -> tuple:
        settings = (run["prompt"], run["negative_prompt"], run["num_inference_steps"], run["seeds"])
        return (*settings, float(w), method)

    def _build_cells(self, n: int) -> None:
        raise NotImplementedError


class SeedGridPanel(GridWork, W.VBox):
    """The seed grid and w sweep of a :class:`~diffexplain.widgets.GuidanceLab` (``lab.grid``)."""

    def __init__(self, owner: GuidanceLab, seeds: int = counts.DEFAULT_SEEDS) -> None:
        super().__init__()
        self.add_class("dx-seed-grid")
        self.owner = owner
        self.n_seeds = W.BoundedIntText(value=seeds, min=2, max=48, description="seeds")
        self.n_seeds.layout.width = "140px"
        self.n_seeds.add_class("dx-grid-seeds")
        self.count_button = button("Count seeds", "dx-grid-run")
        self.sweep_button = button("Sweep w", "dx-sweep-run")
        self.compare_button = button("Compare methods", "dx-compare-methods")
        self.methods_table = W.HTML()
        self.methods_table.add_class("dx-methods-table")
        sweep_text = ", ".join(f"{w:g}" for w in counts.SWEEP_SCALES)
        self.note = W.HTML()
        self.note.add_class("dx-grid-note")
        self.columns_box = W.HBox(layout=W.Layout(flex_flow="row wrap"))
        self.columns_box.add_class("dx-grid-columns")
        self.titles: list[W.HTML] = []
        self.count_labels: list[W.HTML] = []
        self.images: list[list[W.Image]] = []  # [column][seed]
        self.columns: list[Column | None] = [None, None, None]  # w = 0, 1, the chosen w
        self.sweep_columns: list[Column] = []
        self.sweep_table = W.HTML()
        self.sweep_table.add_class("dx-sweep-table")
        self.fig = sweep_figure()
        self._cache: dict[tuple, Column] = {}
        self.count_button.on_click(owner.guard(lambda _: owner.start(self._count_work)))
        self.sweep_button.on_click(owner.guard(lambda _: owner.start(self._sweep_work)))
        self.compare_button.on_click(owner.guard(lambda _: owner.start(self._compare_work)))
        self.help = W.HTML(
            f"<div style='font-size:0.9em;color:#444;max-width:900px'>"
            f"{GRID_HELP.format(n=seeds, sweep=sweep_text)}</div>"
        )
        self.children = [
            self.help,
            # the owner's Stop button and progress bar again (a second view of each): the grid is far below
            W.HBox(
                [
                    self.n_seeds,
                    self.count_button,
                    self.sweep_button,
                    self.compare_button,
                    owner.stop_button,
                    owner.progress,
                ]
            ),
            self.note,
            self.columns_box,
            self.sweep_table,
            figure_box(self.fig, "dx-sweep-plot"),
            self.methods_table,
        ]
        self.clear()

    def _build_cells(self, n: int) -> None:
        """Three columns of ``n`` picture cells, each with a title and a count (old cells are closed)."""
        for box in self.columns_box.children:
            _close_tree(box)
        boxes, self.titles, self.count_labels, self.images = [], [], [], []
        for _ in range(3):
            title, label = W.HTML(), W.HTML("—")
            title.add_class("dx-grid-title")
            label.add_class("dx-grid-count")
            tiles = []
            for _ in range(n):
                image = W.Image(format="png", width=TILE, height=TILE, layout=W.Layout(margin="1px"))
                image.add_class("dx-grid-image")
                tiles.append(image)
            grid = W.GridBox(tiles, layout=W.Layout(grid_template_columns=f"repeat(4, {TILE + 8}px)"))
            box = W.VBox([title, label, grid], layout=W.Layout(align_items="center", margin="2px 8px"))
            box.add_class("dx-grid-column")
            boxes.append(box)
            self.titles.append(title)
            self.count_labels.append(label)
            self.images.append(tiles)
        self.columns_box.children = boxes


def _thumbnails(column: Column, size: int = 40) -> str:
    """The column's pictures in a row of small framed images (inline PNGs: the table is one HTML value)."""
    cells = []
    for j, picture in enumerate(column.images):
        verdict = None if column.verdicts is None else column.verdicts[j]
        border = NO_BORDER if verdict is None else RIGHT_BORDER if verdict else WRONG_BORDER
        data = base64.b64encode(png(picture.resize((size, size)))).decode("ascii")
        cells.append(
            f"<img class='dx-method-image' src='data:image/png;base64,{data}' width='{size}' height='{size}' "
            f"title='seed {column.seeds[j]}' style='border:{border.replace('3px', '2px')};margin:1px'>"
        )
    return "".join(cells)


def _tile(picture: Image.Image) -> Image.Image:
    return picture if picture.width == TILE else picture.resize((TILE, TILE))


def _close_tree(widget: W.Widget) -> None:
    """Close a widget and everything inside it (their models leave the kernel and the page)."""
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()
