"""A small server-side renderer: the widgets' plotly figures drawn with PIL into PNG bytes.

Used where plotly cannot run in the page (Colab's widget manager, classic Notebook 6 without plotly's
extension): ``figures.LiveFigure`` in image mode shows this PNG in an ``ipywidgets.Image``. It draws what
the widgets use and nothing more: scatter traces (lines, markers, dashes), bars, subplots side by side,
a secondary y axis on the right, log y axes, fixed ranges and tick values, vertical line shapes,
subplot titles, the figure title and a legend below the plot.
"""

from __future__ import annotations

import base64
import importlib.util
import math
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw, ImageFont

from diffexplain import render

WIDTH = 820  # CSS pixels of the picture (drawn at SCALE times that for sharp text)
SCALE = 2
COLORWAY = ["#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880"]
DASHES = {"dot": (2, 3), "dash": (7, 4), "longdash": (12, 4), "dashdot": (7, 3, 2, 3)}
_GRID, _AXIS, _TEXT = (232, 232, 238), (120, 120, 130), (50, 50, 60)
_FONT_FILES = [  # whole fonts with Greek letters (ε, ᾱ, Δ) and more scripts; matplotlib's copy is on Colab
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/arial.ttf",
]


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A whole system font (any script a prompt's words are in), else the package's subset (``render.font``)."""
    files = list(_FONT_FILES)
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        for where in spec.submodule_search_locations:
            files.append(str(Path(where) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"))
    for file in files:
        if Path(file).is_file():
            try:
                return ImageFont.truetype(file, size)
            except OSError:
                continue
    return render.font(size)  # the subset shipped with the package: Greek letters, not boxes


def _plain(text: Any) -> str:
    """Figure text without plotly's HTML tags (``<b>``, ``<br>``)."""
    return re.sub(r"<[^>]+>", "", str(text or "").replace("<br>", " "))


def _rgb(color: Any, default: str) -> tuple[int, int, int]:
    from PIL import ImageColor

    try:
        return ImageColor.getrgb(str(color))[:3] if color else ImageColor.getrgb(default)[:3]
    except ValueError:
        return ImageColor.getrgb(default)[:3]


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{value:.4g}"


class _Axis:
    """One axis: its pixel span, value range (log10 units for log axes) and ticks."""

    def __init__(self, spec: dict, values: list[float], pixels: tuple[float, float], *, flip: bool) -> None:
        self.spec = spec
        self.log = spec.get("type") == "log"
        self.pixels, self.flip = pixels, flip
        fixed = spec.get("range")
        if fixed is not None and None not in fixed:
            lo, hi = float(fixed[0]), float(fixed[1])
        else:
            seen = [
                math.log10(v) if self.log else v for v in values if _finite(v) and (v > 0 or not self.log)
            ]
            lo, hi = (min(seen), max(seen)) if seen else (0.0, 1.0)
            pad = (hi - lo) * 0.06 or (abs(hi) * 0.1 or 1.0)
            lo, hi = lo - pad, hi + pad
        self.lo, self.hi = lo, hi

    def to_pixel(self, value: float) -> float:
        v = math.log10(value) if self.log else value
        frac = (v - self.lo) / (self.hi - self.lo)
        a, b = self.pixels
        return b - frac * (b - a) if self.flip else a + frac * (b - a)

    def ticks(self) -> list[float]:
        if self.spec.get("tickmode") == "array" and self.spec.get("tickvals") is not None:
            return [float(v) for v in self.spec["tickvals"]]
        if self.log:
            return [10.0**e for e in range(math.ceil(self.lo), math.floor(self.hi) + 1)]
        return _nice_ticks(self.lo, self.hi)

    def inside(self, value: float) -> bool:
        v = math.log10(value) if self.log and value > 0 else value
        return self.lo - 1e-9 <= v <= self.hi + 1e-9


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _number(value: Any) -> Any:
    """numpy scalars as floats (strings stay: categories)."""
    return value if isinstance(value, str) or value is None else float(value)


def _values(values: Any) -> list[Any]:
    """A trace's x or y as a list: tuples, numpy arrays and plotly's base64 form (``bdata``)."""
    if values is None:
        return []
    if isinstance(values, dict) and "bdata" in values:
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return [_number(v) for v in values]


def _xy(trace: dict) -> tuple[list[Any], list[Any]]:
    x, y = _values(trace.get("x")), _values(trace.get("y"))
    if not x and y:
        x = list(range(len(y)))
    return x, y


def _axis_key(ref: str, letter: str) -> str:
    """'x2' -> 'xaxis2', 'y' -> 'yaxis'."""
    return f"{letter}axis{ref[1:]}"


def _dashed(
    draw: ImageDraw.ImageDraw, points: Sequence[tuple[float, float]], color, width: int, dash
) -> None:
    if not dash:
        draw.line(points, fill=color, width=width, joint="curve")
        return
    pattern = [d * width for d in dash]
    index, left, on = 0, pattern[0], True
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        length = math.hypot(x1 - x0, y1 - y0)
        done = 0.0
        while done < length:
            part = min(left, length - done)
            if on:
                a, b = done / length, (done + part) / length
                draw.line(
                    [(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
                    fill=color,
                    width=width,
                )
            done += part
            left -= part
            if left <= 1e-9:
                index = (index + 1) % len(pattern)
                left, on = pattern[index], not on


def _marker(draw: ImageDraw.ImageDraw, x: float, y: float, size: float, color, symbol: str) -> None:
    r = size / 2
    if symbol == "diamond":
        draw.polygon([(x, y - r * 1.3), (x + r * 1.3, y), (x, y + r * 1.3), (x - r * 1.3, y)], fill=color)
    else:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=color)


def _text(
    img: Image.Image, xy: tuple[float, float], text: str, size: int, anchor: str, angle: int = 0
) -> None:
    font = _font(size * SCALE)
    if not angle:
        ImageDraw.Draw(img).text(xy, text, font=font, fill=_TEXT, anchor=anchor)
        return
    box = ImageDraw.Draw(img).textbbox((0, 0), text, font=font, anchor="lt")
    label = Image.new("RGBA", (box[2] + 2, box[3] + 2), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((0, 0), text, font=font, fill=_TEXT, anchor="lt")
    label = label.rotate(angle, expand=True)
    if anchor == "rt":  # the label's end at xy (tick labels turned up to the right)
        where = (int(xy[0] - label.width), int(xy[1]))
    else:
        where = (int(xy[0] - label.width / 2), int(xy[1] - label.height / 2))
    img.paste(label, (max(0, where[0]), max(0, where[1])), label)


def figure_image(fig: go.Figure, width: int = WIDTH) -> Image.Image:
    """Draw ``fig`` (the subset of plotly the widgets use) as a PIL image ``SCALE`` times ``width`` wide."""
    spec = fig.to_dict()
    layout: dict = dict(spec.get("layout") or {})
    layout.pop("template", None)
    traces = [dict(t) for t in spec.get("data") or []]
    s = SCALE
    legend_items = [t for t in traces if t.get("name") and t.get("showlegend", True) is not False]
    if len(legend_items) < 2 and layout.get("showlegend") is not True:  # plotly: no legend for one trace
        legend_items = []
    per_row = max(1, min(4, len(legend_items)))
    legend_rows = math.ceil(len(legend_items) / per_row) if legend_items else 0
    height = int(layout.get("height") or 300)
    margin = {"l": 60, "r": 50, "t": 40, "b": 40, **(layout.get("margin") or {})}
    margin["b"] = max(int(margin["b"]), 40)
    plot_bottom = height - margin["b"] + 4
    total_h = plot_bottom + margin["b"] + legend_rows * 20 + 6
    img = Image.new("RGB", (width * s, total_h * s), "white")
    draw = ImageDraw.Draw(img)
    left, right, top = margin["l"], width - margin["r"], max(margin["t"], 30)
    bottom = height - margin["b"]

    # Axes: every x/y axis named by a trace, the layout or a shape; overlaying y axes share a domain.
    names = {k for k in layout if re.fullmatch(r"[xy]axis\d*", k)} | {"xaxis", "yaxis"}
    for t in traces:
        names |= {_axis_key(t.get("xaxis", "x"), "x"), _axis_key(t.get("yaxis", "y"), "y")}
    values: dict[str, list[Any]] = {n: [] for n in names}
    for t in traces:
        x, y = _xy(t)
        xs = [i for i, _ in enumerate(x)] if any(isinstance(v, str) for v in x) else x
        values[_axis_key(t.get("xaxis", "x"), "x")] += list(xs)
        ys = [0.0, *y] if t.get("type") == "bar" else y
        values[_axis_key(t.get("yaxis", "y"), "y")] += list(ys)
    axes: dict[str, _Axis] = {}
    for name in sorted(names):
        a_spec = dict(layout.get(name) or {})
        base = (
            dict(layout.get(_axis_key(a_spec["overlaying"], "y")) or {})
            if a_spec.get("overlaying")
            else a_spec
        )
        d0, d1 = base.get("domain") or [0.0, 1.0]
        if name.startswith("x"):
            pixels = (left + d0 * (right - left), left + d1 * (right - left))
        else:
            pixels = (top + (1 - d1) * (bottom - top), top + (1 - d0) * (bottom - top))
        axes[name] = _Axis(a_spec, values[name], (pixels[0] * s, pixels[1] * s), flip=name.startswith("y"))

    # Which x axis each y axis is drawn against (its anchor, else the first trace's pairing).
    pairs = {}
    for t in traces:
        pairs.setdefault(_axis_key(t.get("yaxis", "y"), "y"), _axis_key(t.get("xaxis", "x"), "x"))
    for name, axis in axes.items():
        if name.startswith("y"):
            anchor = axis.spec.get("anchor")
            if anchor and anchor != "free":
                pairs[name] = _axis_key(anchor, "x")
            pairs.setdefault(name, "xaxis")

    for name, axis in axes.items():  # grid lines and tick labels
        if name.startswith("x"):
            if not any(pairs.get(y) == name for y in axes if y.startswith("y")) and values[name] == []:
                continue
            y_name = next(
                (y for y, x in pairs.items() if x == name and not axes[y].spec.get("overlaying")), "yaxis"
            )
            y_px = axes[y_name].pixels
            cats = next(
                (
                    _xy(t)[0]
                    for t in traces
                    if _axis_key(t.get("xaxis", "x"), "x") == name
                    and any(isinstance(v, str) for v in _xy(t)[0])
                ),
                None,
            )
            ticks = list(range(len(cats))) if cats else axis.ticks()
            for v in ticks:
                if not axis.inside(v):
                    continue
                px = axis.to_pixel(v)
                if axis.spec.get("showgrid", True):
                    draw.line([(px, y_px[0]), (px, y_px[1])], fill=_GRID, width=s)
                label = _plain(cats[int(v)]) if cats else _label(v)
                angle = -int(axis.spec.get("tickangle") or 0)
                if angle:
                    _text(img, (px + 4 * s, y_px[1] + 4 * s), label[:16], 10, "rt", angle=angle)
                else:
                    _text(img, (px, y_px[1] + 4 * s), label, 11, "mt")
            title = _plain((axis.spec.get("title") or {}).get("text"))
            if title:
                _text(img, ((axis.pixels[0] + axis.pixels[1]) / 2, y_px[1] + 19 * s), title, 11, "mt")
            draw.line([(axis.pixels[0], y_px[1]), (axis.pixels[1], y_px[1])], fill=_AXIS, width=s)
        else:
            x_px = axes[pairs[name]].pixels
            on_right = axis.spec.get("side") == "right"
            edge = x_px[1] if on_right else x_px[0]
            for v in axis.ticks():
                if not axis.inside(v):
                    continue
                py = axis.to_pixel(v)
                if axis.spec.get("showgrid", True) and not on_right:
                    draw.line([(x_px[0], py), (x_px[1], py)], fill=_GRID, width=s)
                _text(
                    img, (edge + (5 if on_right else -5) * s, py), _label(v), 11, "lm" if on_right else "rm"
                )
            title = _plain((axis.spec.get("title") or {}).get("text"))
            if title:
                where = edge + (44 if on_right else -46) * s
                _text(img, (where, (axis.pixels[0] + axis.pixels[1]) / 2), title, 11, "mm", angle=90)
            draw.line([(edge, axis.pixels[0]), (edge, axis.pixels[1])], fill=_AXIS, width=s)

    for shape in layout.get("shapes") or []:  # vertical lines (the current step)
        if shape.get("type") != "line" or shape.get("x0") != shape.get("x1"):
            continue
        x_axis = axes.get(_axis_key(shape.get("xref", "x"), "x"))
        if x_axis is None or not _finite(shape.get("x0")) or not x_axis.inside(shape["x0"]):
            continue
        px = x_axis.to_pixel(shape["x0"])
        y_px = axes[
            next((y for y, x in pairs.items() if x == _axis_key(shape.get("xref", "x"), "x")), "yaxis")
        ].pixels
        color = _rgb((shape.get("line") or {}).get("color"), "#888888")
        draw.line([(px, y_px[0]), (px, y_px[1])], fill=color, width=s)

    for i, t in enumerate(traces):  # the data
        x_axis, y_axis = axes[_axis_key(t.get("xaxis", "x"), "x")], axes[_axis_key(t.get("yaxis", "y"), "y")]
        x, y = _xy(t)
        if any(isinstance(v, str) for v in x):
            x = list(range(len(x)))
        points = [
            (x_axis.to_pixel(a), y_axis.to_pixel(b))
            for a, b in zip(x, y, strict=False)
            if _finite(a) and _finite(b) and (b > 0 or not y_axis.log)
        ]
        line, marker = t.get("line") or {}, t.get("marker") or {}
        default = COLORWAY[i % len(COLORWAY)]
        if t.get("type") == "bar":
            colors = marker.get("color")
            half = (x_axis.to_pixel(1) - x_axis.to_pixel(0)) * 0.4 if len(x) else 0
            zero = y_axis.to_pixel(0.0)
            for j, (px, py) in enumerate(points):
                c = colors[j] if isinstance(colors, list | tuple) and j < len(colors) else colors
                draw.rectangle([px - half, min(py, zero), px + half, max(py, zero)], fill=_rgb(c, default))
            continue
        color = _rgb(
            line.get("color") or (marker.get("color") if isinstance(marker.get("color"), str) else None),
            default,
        )
        mode = t.get("mode") or "lines+markers"
        if "lines" in mode and len(points) > 1:
            _dashed(draw, points, color, 2 * s, DASHES.get(line.get("dash") or ""))
        if "markers" in mode:
            size = float(marker.get("size") or 6) * s
            for px, py in points:
                _marker(draw, px, py, size, color, str(marker.get("symbol") or "circle"))

    for note in layout.get("annotations") or []:  # subplot titles
        if note.get("xref") == "paper" and note.get("yref") == "paper":
            px = (left + float(note.get("x", 0)) * (right - left)) * s
            py = (top + (1 - float(note.get("y", 1))) * (bottom - top) - 4) * s
            _text(img, (px, py), _plain(note.get("text")), 12, "mb")
    title = layout.get("title") or {}
    if _plain(title.get("text")):
        _text(
            img,
            (left * s, 8 * s),
            _plain(title["text"]),
            int((title.get("font") or {}).get("size") or 14),
            "lt",
        )

    column = (width - 20) / per_row  # the legend, below the plot
    for j, t in enumerate(legend_items):
        lx = (10 + (j % per_row) * column) * s
        ly = (plot_bottom + margin["b"] - 4 + (j // per_row) * 20) * s
        color = _rgb(
            (t.get("line") or {}).get("color") or (t.get("marker") or {}).get("color")
            if not isinstance((t.get("marker") or {}).get("color"), list)
            else None,
            COLORWAY[traces.index(t) % len(COLORWAY)],
        )
        if t.get("type") == "bar" or (t.get("mode") or "") == "markers":
            _marker(
                draw, lx + 12 * s, ly, 8 * s, color, str((t.get("marker") or {}).get("symbol") or "circle")
            )
        else:
            _dashed(
                draw,
                [(lx, ly), (lx + 24 * s, ly)],
                color,
                2 * s,
                DASHES.get((t.get("line") or {}).get("dash") or ""),
            )
        _text(img, (lx + 30 * s, ly), _plain(t["name"]), 11, "lm")
    return img


def figure_png(fig: go.Figure, width: int = WIDTH) -> bytes:
    """PNG bytes of ``figure_image(fig)`` (what ``ipywidgets.Image`` shows)."""
    return render.png_bytes(figure_image(fig, width))
