"""What a front end that cannot run here relies on, checked in Python: the anywidget StepExplorer's display
data and comm state (VS Code's and Colab's widget managers read these), and Colab's path through anywidget.

- Display data: ``application/vnd.jupyter.widget-view+json`` with the model's id and protocol version 2;
  the model and view are anywidget's ``AnyModel`` / ``AnyView`` from module ``anywidget`` at anywidget's
  own version (a widget manager loads that module by name and version: VS Code and Colab from a CDN).
- The ES module travels in the state as text (``_esm``), self-contained: no import of any other module,
  a default export ``{ render }`` (loaded in Chromium from a blob URL by
  tests/browser/test_frontends_browser.py::test_esm_loads_from_a_blob_url_and_scrubs_a_fake_model).
- The trace's pictures leave as ONE binary buffer of the comm message (buffer path ``_frames``), not base64.
- Colab: where ``google.colab.output`` is importable, anywidget turns on Colab's custom widget manager itself
  and puts its URL in the display data's metadata. Colab cannot run here: a stand-in module with the two
  names anywidget reads (``enable_custom_widget_manager`` and ``_widgets._installed_url``) checks that
  anywidget's code takes that path for diffexplain's widget; it says nothing about Colab's own side.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import anywidget
import ipywidgets as W
import pytest
from anywidget import _util as anywidget_util
from ipywidgets.widgets.widget import _remove_buffers

from diffexplain import Explainer
from diffexplain.web import trace_view_js
from diffexplain.widgets import ClassicStepExplorer, StepExplorer

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
COLAB_URL = (
    "https://ssl.gstatic.com/colaboratory-static/widgets/colab-cdn-widget-manager/stand-in/manager.min.js"
)


@pytest.fixture(scope="module")
def explorer(parts: dict) -> StepExplorer:
    trace = Explainer(**parts, progress=False).run("a red circle", num_inference_steps=3, seed=0)
    return StepExplorer(trace)


def test_display_data_names_anywidgets_model_and_view(explorer: StepExplorer) -> None:
    data, metadata = explorer._repr_mimebundle_()
    view = data[WIDGET_MIME]
    assert view["model_id"] == explorer.model_id and view["version_major"] == 2
    assert "text/plain" in data and metadata == {}  # outside Colab: no widget-manager metadata
    state = explorer.get_state()
    version = anywidget._version._ANYWIDGET_SEMVER_VERSION  # what the front end's module must match
    major, minor = anywidget.__version__.split(".")[:2]
    assert version == f"~{major}.{minor}.*"  # the installed anywidget's release line
    expected = {"_model_name": "AnyModel", "_view_name": "AnyView"}
    expected |= {"_model_module": "anywidget", "_view_module": "anywidget"}
    expected |= {"_model_module_version": version, "_view_module_version": version}
    assert {k: state[k] for k in expected} == expected


def test_esm_is_one_self_contained_module_with_a_default_render(explorer: StepExplorer) -> None:
    esm = explorer.get_state()["_esm"]
    assert esm == trace_view_js()  # the shared module's text itself, not a path or a URL
    code = re.sub(r"//[^\n]*|/\*.*?\*/", "", esm, flags=re.S)  # comments may mention anything
    assert not re.search(r"^\s*import\b|\bimport\s*\(|\brequire\s*\(", code, flags=re.M), (
        "imports another module"
    )
    assert not re.search(r"\bfetch\s*\(|XMLHttpRequest|https?://(?!www\.w3\.org/2000/svg)", code), (
        "uses the network"
    )
    assert re.search(r"^export default \{ render \};$", code, flags=re.M)
    assert re.search(r"^function render\(\{ model, el: host \}\)", code, flags=re.M)


def test_pictures_leave_as_one_binary_buffer(explorer: StepExplorer) -> None:
    state, buffer_paths, buffers = _remove_buffers(explorer.get_state())
    assert buffer_paths == [["_frames"]] and len(buffers) == 1
    frames = bytes(buffers[0])
    assert frames == explorer._frames and frames[:8] == b"\x89PNG\r\n\x1a\n"
    assert "_frames" not in state and all(isinstance(v, list) for v in state["_index"].values())
    offset, length = state["_index"]["0/xt"]
    assert frames[offset : offset + 8] == b"\x89PNG\r\n\x1a\n" and offset + length <= len(frames)


@pytest.fixture
def colab(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A stand-in ``google.colab.output`` with what anywidget reads of it; returns the calls it got."""
    calls: list[str] = []
    google, colab, output = (types.ModuleType(n) for n in ("google", "google.colab", "google.colab.output"))
    output.enable_custom_widget_manager = lambda: calls.append("enable_custom_widget_manager")
    output._widgets = types.SimpleNamespace(_installed_url=COLAB_URL)
    google.colab, colab.output = colab, output
    for name, module in {"google": google, "google.colab": colab, "google.colab.output": output}.items():
        monkeypatch.setitem(sys.modules, name, module)
    anywidget_util.enable_custom_widget_manager_once.cache_clear()  # once per process: start afresh
    yield calls
    anywidget_util.enable_custom_widget_manager_once.cache_clear()


def test_colab_display_data_carries_the_custom_widget_manager(
    explorer: StepExplorer, colab: list[str]
) -> None:
    data, metadata = explorer._repr_mimebundle_()
    assert data[WIDGET_MIME]["model_id"] == explorer.model_id
    assert metadata == {WIDGET_MIME: {"colab": {"custom_widget_manager": {"url": COLAB_URL}}}}
    explorer._repr_mimebundle_()
    assert colab == ["enable_custom_widget_manager"]  # turned on once, by anywidget, with no setup cell


def test_colab_ipywidgets_views_get_no_widget_manager_metadata(parts: dict, colab: list[str]) -> None:
    """The views still on plain ipywidgets carry no such metadata: in Colab they need the setup cell's
    ``diffexplain.colab.setup()`` (it calls ``enable_custom_widget_manager`` itself)."""
    trace = Explainer(**parts, progress=False).run("a red circle", num_inference_steps=2, seed=0)
    classic = ClassicStepExplorer(trace)
    assert isinstance(classic, W.DOMWidget) and not isinstance(classic, anywidget.AnyWidget)
    bundle = classic._repr_mimebundle_()
    data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
    assert WIDGET_MIME in data and WIDGET_MIME not in (metadata or {})
    assert colab == []
    from diffexplain.colab import setup

    setup(quiet=True)
    assert colab == ["enable_custom_widget_manager"]


def test_every_view_is_an_anywidget_so_ipywidgets_8_1_9_is_allowed() -> None:
    """VS Code shows no plain ipywidgets control with ipywidgets 8.1.9 (microsoft/vscode-jupyter#17504).
    Every public view is an anywidget, which needs none, so the package allows every ipywidgets from 7.7
    (Colab's 7.7.1) on, 8.1.9 included. A plain-ipywidgets view added to ``__all__`` fails here: then VS
    Code users need ipywidgets != 8.1.9 again (the ``Classic*`` views, not in ``__all__``, are plain)."""
    import tomllib

    from packaging.requirements import Requirement

    import diffexplain.widgets as widgets

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    (spec,) = [
        Requirement(r).specifier for r in pyproject["project"]["dependencies"] if r.startswith("ipywidgets")
    ]
    plain = [n for n in widgets.__all__ if isinstance(getattr(widgets, n), type)]
    plain = [n for n in plain if not issubclass(getattr(widgets, n), anywidget.AnyWidget)]
    assert plain == [], f"plain ipywidgets views in diffexplain.widgets: {plain}"
    assert all(v in spec for v in ("7.7.1", "8.1.8", "8.1.9", "8.2.0")), spec
