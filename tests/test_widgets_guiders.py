"""GuidanceLab's method chooser at Python level: the guided run, the re-guided strip, the effective-w
timeline and the seed grid follow the chosen guidance method; "Compare methods" counts the same seeds
under every method of the menu, with saturation."""

from __future__ import annotations

import pytest

from diffexplain import Explainer
from diffexplain.guiders.menu import PLAIN
from diffexplain.views import effective_scales
from diffexplain.widgets import GuidanceLab
from tests.test_widgets import assert_clean, unet_calls

PROMPT = "a red circle on the left"
STEPS = 3
APG_LABEL = "APG (β = −0.5)"


@pytest.fixture
def lab(parts: dict) -> GuidanceLab:
    explainer = Explainer(**parts, progress=False).set_scheduler("ddim")
    return GuidanceLab(explainer, PROMPT, seed=0, guidance_scale=5.0, num_inference_steps=STEPS, seeds=2)


def test_the_method_menu_runs_the_guided_side_with_the_chosen_method(lab: GuidanceLab) -> None:
    assert lab.method.value == PLAIN and lab.on.run_settings.guider is None
    assert set(lab.method.options) >= {
        PLAIN,
        APG_LABEL,
        "CFG + rescale 0.7",
        "CFG++ (λ = 0.6)",
    }  # DDIM: CFG++ too
    plain_on, plain_strip = lab.on, lab.strip.value
    assert all(
        abs(w - 5.0) < 1e-6 for w in lab.effective.data[0].y
    )  # plain CFG: the run's own w at every step

    lab.method.value = APG_LABEL  # outside a kernel the new run finishes at once
    assert lab.on is not plain_on and lab.on.run_settings.guider["name"] == "apg"
    assert lab.off.run_settings.guider is None  # w = 1 has no guidance to choose
    assert "APG" in lab.on_title.value and lab.strip.value != plain_strip
    assert list(lab.effective.data[0].y) == effective_scales(lab.on)
    assert any(abs(w - 5.0) > 1e-3 for w in lab.effective.data[0].y)  # APG is not CFG along Δ
    with unet_calls(lab.explainer) as calls:  # the slider re-guides with the method, no model call
        lab.scale.value = 3.0
    assert calls == [] and "w = 3" in lab.strip_label.value
    assert_clean(lab)


def test_compare_methods_counts_the_same_seeds_under_every_method(lab: GuidanceLab) -> None:
    lab.compare_methods()
    table = lab.grid.methods_table.value
    assert all(label in table for label in lab.methods), table
    assert table.count("<tr>") == 1 + len(lab.methods)  # a header and one row per method
    assert "at gamut edge" in table and "w = 5" in table
    assert table.count("dx-method-image") == len(lab.methods) * 2  # each method's pictures of the 2 seeds
    keys = [k for k in lab.grid._cache if k[-2] == 5.0]  # noqa: SLF001 - the grid's cache, by method
    assert sorted(k[-1] for k in keys) == sorted(lab.methods)  # one cached column per method
    lab.method.value = APG_LABEL
    lab.count_seeds()  # the third column: the chosen method, from the cache
    third = lab.grid.columns[2]
    assert third.method == "adaptive projected guidance (APG)" and "APG" in lab.grid.titles[2].value
    assert_clean(lab)
