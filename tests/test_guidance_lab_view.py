"""The anywidget GuidanceLab at Python level: what goes to the browser (every step's x̂0 once, in one
buffer), the browser's messages (run, the w slider, range, the seed grid) and busy state with Stop."""

from __future__ import annotations

import pytest

from diffexplain import Explainer
from diffexplain.widgets import ClassicGuidanceLab, GuidanceLab
from diffexplain.widgets.trace_view import TraceView
from tests.test_jobs import ManualLoop
from tests.tiny_parts import tiny_parts

PROMPT = "a red circle"
STEPS = 3
PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def ex() -> Explainer:
    return Explainer(**tiny_parts(), progress=False)


@pytest.fixture(scope="module")
def lab(ex: Explainer) -> GuidanceLab:
    return GuidanceLab(ex, PROMPT, seed=0, guidance_scale=5.0, num_inference_steps=STEPS, seeds=2)


def message(lab: GuidanceLab, **content) -> None:
    lab._on_message(lab, content, [])  # noqa: SLF001 - what a browser message does


def frame(lab: GuidanceLab, key: str) -> bytes:
    offset, length = lab._index[key]  # noqa: SLF001 - the buffer the browser reads
    return lab._frames[offset : offset + length]  # noqa: SLF001


def test_every_steps_pictures_go_once_in_one_buffer(lab: GuidanceLab) -> None:
    assert isinstance(lab, TraceView) and lab.output.outputs == ()
    n = len(lab.on)  # loop steps (PNDM's warm-up adds one)
    keys = {f"{k}/{run}" for k in range(n) for run in ("off", "on")} | {"off", "on", "diff"}
    assert keys <= set(lab._index) and not any(k.endswith("/range") for k in lab._index)  # noqa: SLF001
    assert all(frame(lab, k).startswith(PNG) for k in keys)
    assert frame(lab, "on") == lab.images["on"].value  # the final the Python stand-in shows
    assert frame(lab, "0/off") != frame(lab, f"{n - 1}/off")  # x̂0 changes over the steps
    view = lab._view  # noqa: SLF001
    assert view["n"] == n and view["method"] == lab.method.value and len(view["effective"]) == n
    assert lab._strip.startswith(PNG) and "re-guided at w = 5" in lab._reguide["label"]  # noqa: SLF001


def test_the_w_slider_is_a_message_that_reguides_without_resending_the_steps(lab: GuidanceLab) -> None:
    version, strip = lab._version, lab._strip  # noqa: SLF001
    message(lab, action="scale", w=8.0)
    assert lab.scale.value == 8.0 and lab._strip != strip and lab._reguide["w"] == 8.0  # noqa: SLF001
    assert lab._version == version  # noqa: SLF001 - the steps' pictures were not sent again
    assert lab._reguide["push"] == pytest.approx([8.0 * d for d in lab._view["delta"][0]["y"]])  # noqa: SLF001


def test_run_and_range_messages_take_the_browsers_boxes(lab: GuidanceLab) -> None:
    message(lab, action="run", prompt="a blue square", seed="4", steps=2)
    assert lab.on.run_settings.prompt == "a blue square" and lab.on.settings["seed"] == 4
    n = len(lab.on)
    assert (
        lab.steps.value == 2
        and lab._view["n"] == n
        and f"{n - 1}/on" in lab._index
        and f"{n}/on" not in lab._index
    )  # noqa: SLF001
    message(lab, action="range_off", a=0, b=1)
    assert lab.ranged is not None and lab._view["ranged"] and "1/range" in lab._index  # noqa: SLF001
    message(lab, action="run", seed="-1")
    assert "the seed box holds '-1'" in lab.status.value and lab.output.outputs == ()


def test_the_seed_grid_is_sent_with_its_cells_and_verdicts(lab: GuidanceLab) -> None:
    message(lab, action="grid", what="count", seeds=2, seed="0")
    grid = lab._grid  # noqa: SLF001
    assert [len(c["cells"]) for c in grid["columns"]] == [2, 2, 2] and grid["seeds"] == 2
    assert [c["count"] for c in grid["columns"]] == [label.value for label in lab.grid.count_labels]
    assert set(lab._grid_index) == {f"{c}/{j}" for c in range(3) for j in range(2)}  # noqa: SLF001
    message(lab, action="grid", what="sweep", seeds=2)
    assert lab._grid["sweep"] and "w = 7.5" in lab._grid["sweep_table"]  # noqa: SLF001
    message(lab, action="grid", what="nothing", seeds=2)
    assert "what='nothing'" in lab.status.value


def test_busy_state_and_stop_from_the_browser(ex: Explainer) -> None:
    lab = GuidanceLab(ex, PROMPT, seed=0, guidance_scale=5.0, num_inference_steps=STEPS, seeds=2)
    loop = lab.schedule = ManualLoop()
    message(lab, action="grid", what="count", seeds=2)
    assert lab.busy and lab.work is not None and all(b.disabled for b in lab.buttons())
    loop.turn()
    message(lab, action="stop")
    loop.run_out()
    assert not lab.busy and lab.work is None and not any(b.disabled for b in lab.buttons())
    assert "stopped" in lab.status.value


def test_the_classic_lab_is_kept(ex: Explainer) -> None:
    lab = ClassicGuidanceLab(ex, PROMPT, seed=0, guidance_scale=5.0, num_inference_steps=STEPS, seeds=2)
    strip = lab.strip.value
    lab.scale.value = 8.0
    assert lab.strip.value != strip and lab.output.outputs == ()
