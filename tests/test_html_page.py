"""The one-file HTML page (``trace.to_html``): self-contained, every step's pictures, the StepExplorer's texts.

The page in a real browser (slider, network): tests/browser/test_html_page_browser.py.
"""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from diffexplain import Explainer, Trace
from diffexplain.explanations import STEP_PANELS
from diffexplain.report import write_report
from tests.conftest import PROMPT

STEPS = 3


@pytest.fixture(scope="module")
def runs(parts):
    ex = Explainer(**parts, progress=False).set_scheduler("ddim")
    on = ex.run(PROMPT, num_inference_steps=STEPS, seed=5, guidance_scale=4.0)
    off = ex.run(PROMPT, num_inference_steps=STEPS, seed=5, guidance_scale=1.0)
    return ex, on, off


def page_data(path: Path) -> dict:
    """The JSON block of a written page."""
    text = path.read_text(encoding="utf-8")
    found = re.search(r'<script id="dx-data" type="application/json">(.*?)</script>', text, re.S)
    assert found, "the page has no data block"
    return json.loads(found.group(1))


class _Links(HTMLParser):
    """Every URL-valued attribute and every <script src>/<link>/<iframe> in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href", "action", "data", "poster") and v]


def png_of(uri: str) -> bytes:
    assert uri.startswith("data:image/png;base64,")
    return base64.b64decode(uri.split(",", 1)[1])


def test_the_page_is_one_self_contained_file(runs, tmp_path):
    _, on, _ = runs
    path = on.to_html(tmp_path / "page.html")
    assert path == tmp_path / "page.html" and sorted(p.name for p in tmp_path.iterdir()) == ["page.html"]
    text = path.read_text(encoding="utf-8")
    links = _Links()
    links.feed(text)
    assert not {"link", "iframe", "object", "embed"} & set(links.tags)
    assert all(u.startswith("data:") for u in links.urls), links.urls  # nothing to fetch
    assert "default-src 'none'" in text  # the page's CSP forbids loading anything, should code try
    data = page_data(path)
    for step in data["steps"]:
        for uri in step["img"].values():
            assert uri is None or uri.startswith("data:image/png;base64,")


def test_every_step_has_the_explorers_panels_and_numbers(runs, tmp_path):
    ex, on, _ = runs
    data = page_data(on.to_html(tmp_path / "page.html"))
    assert len(data["steps"]) == STEPS and data["header"]["steps"] == STEPS
    assert set(data["steps"][0]["img"]) == set(STEP_PANELS)  # x_t, x̂0, channels, ε_c, ε_u, Δ, ε̂
    assert all(uri for step in data["steps"] for uri in step["img"].values())
    # x_t and x̂0 are the trace's saved previews, made once and shared with trace.save
    assert on.previews is not None and data["pictures"].startswith("decoded pictures")
    for k, step in enumerate(data["steps"]):
        assert png_of(step["img"]["x0"]) == on.previews.png("pred_x0", k)
        assert png_of(step["img"]["xt"]) == on.previews.png("latents", k)
    assert data["steps"][0]["img"]["xt"] != data["steps"][-1]["img"]["xt"]
    assert data["steps"][0]["t"] == pytest.approx(on.timesteps[0])
    assert data["series"]["c"][1] == pytest.approx(
        float(on["step.model.cond", 1].pow(2).mean().sqrt()), rel=1e-4
    )
    assert data["cfg"] and all(v is not None for v in data["series"]["d"])
    assert png_of(data["final"])  # the decoded image


def test_the_page_uses_the_step_explorers_own_texts(runs, tmp_path):
    from diffexplain.widgets import StepExplorer

    _, on, _ = runs
    data = page_data(on.to_html(tmp_path / "page.html"))
    widget = StepExplorer(on)
    assert data["help"] in widget.children[0].value
    titles = {key: data["panels"][key] for key in STEP_PANELS}
    shown = " ".join(box.children[0].value for row in widget.children[3:5] for box in row.children)
    assert all(title in shown for title in titles.values())
    assert [s.name for s in widget.fig.data[:5]] == list(data["series_names"].values())


def test_a_guidance_pair_is_shown_side_by_side(runs, tmp_path):
    _, on, off = runs
    data = page_data(on.to_html(tmp_path / "page.html", compare=off))
    pair = data["compare"]
    assert pair["labels"] == [
        "guidance off (w = 1)",
        "guidance on (w = 4)",
    ]  # off first, whichever is compared
    assert pair["this"] == 1 and len(pair["x0"]) == STEPS
    assert png_of(pair["x0"][2][0]) == off.previews.png("pred_x0", 2)
    assert png_of(pair["x0"][2][1]) == on.previews.png("pred_x0", 2)
    assert pair["final"][0] != pair["final"][1] and png_of(pair["difference"])
    assert page_data(on.to_html(tmp_path / "alone.html"))["compare"] is None


def test_guidance_off_has_no_eps_u_and_says_why(runs, tmp_path):
    _, _, off = runs
    data = page_data(off.to_html(tmp_path / "off.html"))
    assert not data["cfg"] and "no ε_u and no Δ" in data["guidance_off"]
    assert all(step["img"]["eps_u"] is None and step["img"]["delta"] is None for step in data["steps"])
    assert all(v is None for v in data["series"]["d"])


def test_a_file_without_previews_and_without_the_model(runs, tmp_path):
    _, on, _ = runs
    on.save(tmp_path / "bare.safetensors", previews=False)
    bare = Trace.load(tmp_path / "bare.safetensors")
    data = page_data(bare.to_html(tmp_path / "bare.html"))
    assert data["pictures"].startswith("fast latent preview")
    assert all(step["img"]["x0"] for step in data["steps"])  # still a picture at every step
    assert bare.previews is None  # nothing could be made without the VAE


def test_text_from_the_trace_cannot_break_out_of_the_page(parts, tmp_path):
    ex = Explainer(**parts, progress=False).set_scheduler("ddim")
    hostile = 'a red square</script><script>alert("x")</script><img src=http://example.com/x>'
    trace = ex.run(hostile, num_inference_steps=1, seed=0)
    path = trace.to_html(tmp_path / "page.html")
    text = path.read_text(encoding="utf-8")
    assert "</script><script>alert" not in text and "<img src=http" not in text
    assert page_data(path)["header"]["prompt"] == hostile  # shown as text, intact


def test_bad_arguments_are_named(runs, tmp_path):
    _, on, _ = runs
    with pytest.raises(TypeError, match="compare='off'"):
        on.to_html(tmp_path / "x.html", compare="off")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        on.to_html(tmp_path)
    assert not (tmp_path / "x.html").exists()


def test_the_report_writes_the_page_beside_the_other_files(runs, tmp_path):
    ex, _, _ = runs
    paths = write_report(PROMPT, tmp_path / "out", explainer=ex, steps=2, guidance_scale=3.0)
    assert paths["HTML page"] == tmp_path / "out" / "trace.html"
    data = page_data(paths["HTML page"])
    assert data["compare"]["labels"] == ["guidance off (w = 1)", "guidance on (w = 3)"]
    # the saved trace carries the same previews the page shows
    saved = Trace.load(paths["trace"])
    assert png_of(data["steps"][1]["img"]["x0"]) == saved.previews.png("pred_x0", 1)
    elsewhere = write_report(PROMPT, tmp_path / "b", explainer=ex, steps=1, html=tmp_path / "lesson.html")
    assert elsewhere["HTML page"].is_file() and not (tmp_path / "b" / "trace.html").exists()
    none = write_report(PROMPT, tmp_path / "c", explainer=ex, steps=1, html=False)
    assert "HTML page" not in none and not (tmp_path / "c" / "trace.html").exists()


def test_the_cli_takes_html_and_no_html():
    from diffexplain.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["explain", "p"]).html is None  # default: OUT/trace.html
    assert parser.parse_args(["explain", "p", "--html", "a.html"]).html == "a.html"
    assert parser.parse_args(["explain", "p", "--no-html"]).no_html
    with pytest.raises(SystemExit):
        parser.parse_args(["explain", "p", "--html", "a.html", "--no-html"])


def test_a_stopped_run_has_a_page_of_the_steps_it_made(runs, tmp_path):
    ex, _, _ = runs
    job = ex.start_run(PROMPT, num_inference_steps=4, seed=2, guidance_scale=3.0)
    job.advance()
    job.advance()
    stopped = job.stop()
    data = page_data(stopped.to_html(tmp_path / "stopped.html"))
    assert len(data["steps"]) == len(stopped) == 2
    assert data["final_label"].startswith("x̂0 at the last step")
    assert png_of(data["final"]) == stopped.previews.png("pred_x0", 1)


def test_bundle_names_a_view_module_that_does_not_exist():
    """bundle(view): the shared module then the view's own; a clear error for a file not there."""
    import pytest

    from diffexplain import web

    with pytest.raises(
        FileNotFoundError, match="view='nothing.js': expected an ES module file of diffexplain/web/"
    ):
        web.bundle("nothing.js")
