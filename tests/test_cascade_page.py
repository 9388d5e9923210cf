"""``CascadeTrace.to_html``: one self-contained page with a button per stage over each stage's own page.

In a real browser (the stage buttons, the frames' sliders): tests/browser/test_cascade_page_browser.py.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from diffexplain import Cascade, CascadeTrace
from diffexplain.families.tiny_kandinsky import tiny_kandinsky_pipelines
from tests.tiny_families import tiny_if_pipelines

PROMPT = "a red circle on the left"
STEPS = 2


class _Page(HTMLParser):
    """A page's buttons (stage names), frames (stage name, srcdoc) and URL-valued attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.buttons: list[str] = []
        self.frames: list[tuple[str, str]] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "button":
            self.buttons.append(a["data-stage"])
        if tag == "iframe":
            self.frames.append((a["data-stage"], a["srcdoc"]))
        self.urls += [v for k, v in attrs if k in ("src", "href", "action", "data", "poster") and v]


def frame_data(srcdoc: str) -> dict:
    found = re.search(r'<script id="dx-data" type="application/json">(.*?)</script>', srcdoc, re.S)
    assert found, "a stage's frame holds no page"
    return json.loads(found.group(1))


@pytest.fixture(scope="module")
def if_trace() -> CascadeTrace:
    cascade = Cascade.from_pipelines(*tiny_if_pipelines(), progress=False)
    return cascade.run(
        PROMPT, seed=4, I=dict(num_inference_steps=STEPS), II=dict(num_inference_steps=STEPS, noise_level=100)
    )


def test_the_page_has_a_button_and_a_frame_per_stage(if_trace, tmp_path):
    path = if_trace.to_html(tmp_path / "cascade.html")
    assert path == tmp_path / "cascade.html" and sorted(p.name for p in tmp_path.iterdir()) == [
        "cascade.html"
    ]
    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    assert page.buttons == ["I", "II"] and [name for name, _ in page.frames] == ["I", "II"]
    assert "I: DeepFloyd IF stage I" in text and "II: DeepFloyd IF stage II" in text  # each button's model
    assert page.urls == []  # nothing to fetch: each stage's page is inside its frame
    assert "default-src 'none'" in text
    for name, srcdoc in page.frames:
        data = frame_data(srcdoc)
        stage = if_trace.stages[name]
        assert len(data["steps"]) == len(stage) == STEPS
        assert data["header"]["seed"] == stage.settings["seed"] and f"(stage {name})" in data["title"]
        assert all(
            uri.startswith("data:image/png") for s in data["steps"] for uri in s["img"].values() if uri
        )
        assert "default-src 'none'" in srcdoc  # the frame's own page forbids loading too
    # stage II is the bigger picture: its frame's final picture is not stage I's
    assert frame_data(page.frames[0][1])["final"] != frame_data(page.frames[1][1])["final"]


def test_a_loaded_kandinsky_cascade_has_its_page(tmp_path):
    prior, decoder = tiny_kandinsky_pipelines()
    cascade = Cascade.from_pipelines(prior, decoder, names=("prior", "decoder"), progress=False)
    trace = cascade.run(
        PROMPT, seed=1, prior=dict(num_inference_steps=STEPS), decoder=dict(num_inference_steps=STEPS)
    )
    trace.save(tmp_path / "k.safetensors")
    loaded = CascadeTrace.load(tmp_path / "k.safetensors")  # no model: the saved previews
    page = _Page()
    page.feed(loaded.to_html(tmp_path / "k.html", title="a <b>lesson</b>").read_text(encoding="utf-8"))
    assert page.buttons == ["prior", "decoder"]
    assert [len(frame_data(doc)["steps"]) for _, doc in page.frames] == [STEPS, STEPS]
    assert "<b>lesson</b>" not in (tmp_path / "k.html").read_text(encoding="utf-8")  # the title is escaped


def test_bad_paths_and_traces_are_named(if_trace, tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        if_trace.to_html(tmp_path)
    empty = CascadeTrace({"prompt": PROMPT, "seed": 0})
    with pytest.raises(ValueError, match="at least one stage"):
        empty.to_html(tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()
