"""A cascade trace as one self-contained HTML page: a stage chooser over each stage's own page.

``write_cascade_page(trace, path)`` (``CascadeTrace.to_html``) renders every stage's trace as the
one-trace page does (``diffexplain.html_page``: step slider, play button, the StepExplorer's panels and
timeline) and puts each page, whole, in the ``srcdoc`` of a frame; buttons above choose the stage shown.
Nothing is fetched: the frames' pages are inside this file, and both this page's and each frame's
Content-Security-Policy forbid loading anything (``default-src 'none'``).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from diffexplain.html_page import page_data, render_page, write_text
from diffexplain.version import __version__

if TYPE_CHECKING:
    from diffexplain.cascade_trace import CascadeTrace

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 12px; color: #222; }
h1 { font-size: 1.2em; margin: 0 0 6px; }
.dx-meta { color: #555; margin-bottom: 8px; }
.dx-stages button { font: inherit; padding: 4px 10px; margin-right: 4px; border: 1px solid #888;
  background: #f4f4f4; border-radius: 4px; cursor: pointer; }
.dx-stages button[aria-pressed="true"] { background: #2a6fdb; color: white; border-color: #2a6fdb; }
iframe { width: 100%; border: 0; margin-top: 8px; min-height: 400px; }
"""

SCRIPT = """
const buttons = Array.from(document.querySelectorAll('.dx-stages button'));
const frames = Array.from(document.querySelectorAll('iframe'));
function fit(frame) {  // a frame as tall as its page
  try { frame.style.height = frame.contentDocument.documentElement.scrollHeight + 'px'; } catch (e) {}
}
function show(name) {
  buttons.forEach(b => b.setAttribute('aria-pressed', String(b.dataset.stage === name)));
  frames.forEach(f => { f.hidden = f.dataset.stage !== name; if (!f.hidden) fit(f); });
}
buttons.forEach(b => b.addEventListener('click', () => show(b.dataset.stage)));
frames.forEach(f => f.addEventListener('load', () => fit(f)));
show(buttons[buttons.length - 1].dataset.stage);
"""


def _stage_label(trace: CascadeTrace, name: str) -> str:
    from diffexplain.families import FAMILIES

    stage = trace.stages[name]
    family = stage.run_settings.model.get("family")
    model = FAMILIES[family].label if family in FAMILIES else family or "model"
    size = f"{stage.run_settings.height}×{stage.run_settings.width}"
    return f"{name}: {model}, {size}, {len(stage)} steps"


def cascade_page(trace: CascadeTrace, title: str | None = None) -> str:
    """The page's HTML: a button per stage (the last shown first) over each stage's one-trace page."""
    # a CascadeTrace, told by what it holds (this module imports no trace code: the trace imports it)
    if not isinstance(getattr(trace, "stages", None), dict) or not trace.stages:
        raise ValueError(f"trace={trace!r}: expected a CascadeTrace with at least one stage")
    empty = [n for n, t in trace.stages.items() if len(t) == 0]
    if empty:
        raise ValueError(
            f"stage {', '.join(empty)} of this cascade trace has no finished step: nothing to show"
        )
    prompt = trace.settings.get("prompt")
    prompt = prompt if isinstance(prompt, str) else " | ".join(map(str, prompt or []))
    title = title or f"diffexplain: {prompt}"
    buttons, frames = [], []
    for name, stage in trace.stages.items():
        page = render_page(page_data(stage, title=f"{title} (stage {name})"))
        quoted = html.escape(name, quote=True)
        buttons.append(
            f'<button type="button" data-stage="{quoted}">{html.escape(_stage_label(trace, name))}</button>'
        )
        frames.append(
            f'<iframe data-stage="{quoted}" title="stage {quoted}" srcdoc="{html.escape(page, quote=True)}">'
            "</iframe>"
        )
    meta = f"seed {trace.settings.get('seed')}, stages {' → '.join(trace.names)}, diffexplain {__version__}"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1>\n<div class="dx-meta">{html.escape(meta)}</div>\n'
        f'<div class="dx-stages" role="group" aria-label="stage">{"".join(buttons)}</div>\n'
        f"{''.join(frames)}\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )


def write_cascade_page(trace: CascadeTrace, path: str | Path, *, title: str | None = None) -> Path:
    """Write ``trace`` as one self-contained HTML file at ``path``; returns the path."""
    return write_text(Path(path), cascade_page(trace, title))
