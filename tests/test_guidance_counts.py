"""guidance_counts: seed columns at any w, counted by the attribute checker (issue #18, part 3).

Tiny random parts for the mechanics (w = 0 really is the unconditional draw, seeds match single runs);
the shipped model for the verdicts, which need a model that draws the shapes dataset.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffexplain import Explainer, guidance_counts
from diffexplain.data.checker import score
from diffexplain.guidance_counts import checker_scene, column_steps, count_seeds, diversity, seed_list
from tests.conftest import PROMPT

STEPS = 3


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_w0_is_the_unconditional_draw_whatever_the_prompt(explainer: Explainer) -> None:
    seeds = (0, 1, 2)
    a, a1 = count_seeds(explainer, PROMPT, scales=(0, 1), seeds=seeds, num_inference_steps=STEPS)
    b, b1 = count_seeds(
        explainer, "a green triangle at the top", scales=(0, 1), seeds=seeds, num_inference_steps=STEPS
    )
    for image_a, image_b in zip(a.images, b.images, strict=True):  # ε̂ = ε_u: the prompt plays no part
        assert np.array_equal(pixels(image_a), pixels(image_b))
    assert any(not np.array_equal(pixels(x), pixels(y)) for x, y in zip(a1.images, b1.images, strict=True))
    assert a.label == "no prompt (w = 0)" and a1.label == "prompt, guidance off (w = 1)"
    # the w = 0 picture is what a guided run makes when ε̂ is replaced by ε_u at every step
    by_hand = explainer.run(
        PROMPT,
        seed=1,
        num_inference_steps=STEPS,
        guidance_scale=3.0,
        hooks={"step.guidance": lambda x, *, ctx: ctx.current["step.model.uncond"]},
    )
    assert np.abs(pixels(by_hand.images[0]) - pixels(a.images[1])).max() <= 1


def test_each_seed_gives_its_single_run_picture(explainer: Explainer) -> None:
    off, on = count_seeds(explainer, PROMPT, scales=(1, 4.0), seeds=[5, 7], num_inference_steps=STEPS)
    assert off.seeds == on.seeds == (5, 7) and off.n == 2
    for column, w in ((off, 1.0), (on, 4.0)):
        single = explainer.run(PROMPT, seed=7, num_inference_steps=STEPS, guidance_scale=w)
        assert np.abs(pixels(single.images[0]) - pixels(column.images[1])).max() <= 1  # batched vs alone
    one_by_one = count_seeds(
        explainer, PROMPT, scales=(4.0,), seeds=[5, 7], num_inference_steps=STEPS, batch_size=1
    )
    assert all(
        np.abs(pixels(x) - pixels(y)).max() <= 1 for x, y in zip(one_by_one[0].images, on.images, strict=True)
    )


def test_a_model_that_is_not_the_shapes_model_gets_no_verdicts(explainer: Explainer) -> None:
    scene, why = checker_scene(explainer, PROMPT)
    assert scene is None and "not trained" in why
    (column,) = count_seeds(explainer, PROMPT, scales=(2.0,), seeds=2, num_inference_steps=STEPS)
    assert column.verdicts is None and column.right is None and column.share is None
    assert column.count_text == "2 pictures"


def test_column_steps_yields_every_loop_step_and_reports_progress(explainer: Explainer) -> None:
    ticks: list[int] = []
    work = column_steps(
        explainer,
        PROMPT,
        0.0,
        (0, 1, 2),
        num_inference_steps=STEPS,
        batch_size=2,
        on_step=lambda: ticks.append(1),
    )
    yielded = []
    with pytest.raises(StopIteration) as done:
        while True:
            yielded.append(next(work))
    per_run = guidance_counts.loop_step_count(explainer, STEPS)
    assert len(yielded) == len(ticks) == 2 * per_run  # two batches: seeds (0, 1), then (2,)
    assert done.value.value.n == 3


def test_diversity_is_the_mean_pairwise_pixel_distance() -> None:
    black, white = Image.new("RGB", (8, 8), (0, 0, 0)), Image.new("RGB", (8, 8), (255, 255, 255))
    assert diversity([black, black, black]) == 0.0
    assert diversity([black, white]) == pytest.approx(1.0)
    assert diversity([black, black, white]) == pytest.approx(2 / 3)  # pairs: 0, 1, 1
    assert diversity([black]) == 0.0


def test_bad_seeds_are_refused_with_a_clear_message() -> None:
    assert seed_list(3, 10) == (10, 11, 12)
    assert seed_list([4, 2]) == (4, 2)
    with pytest.raises(ValueError, match="at least one seed"):
        seed_list(0)
    with pytest.raises(TypeError, match="seeds must be a count or a list"):
        seed_list("12")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seeds must be a count or a list"):
        seed_list(True)


@pytest.fixture(scope="module")
def shapes_model() -> Explainer:
    from diffexplain.models.default import load_default

    torch.set_num_threads(1)
    return load_default(progress=False)


@pytest.mark.slow
def test_verdicts_and_counts_are_the_checkers_on_the_shipped_model(shapes_model: Explainer) -> None:
    prompt = "a red circle on the left and a blue square on the right"
    columns = count_seeds(shapes_model, prompt, scales=(0, 1, 5), seeds=6, num_inference_steps=8)
    for column in columns:
        assert column.verdicts == tuple(score(im, prompt).all_right for im in column.images)
        assert column.right == sum(column.verdicts) and column.share == column.right / 6
        assert column.count_text == f"{column.right} of 6 right"
        assert len(column.readings) == 6 and all(column.readings)
        assert 0 < column.diversity < 1
    # with no prompt the model draws whatever it likes: a random scene matches this one by chance only
    assert columns[0].right <= 1
    text = guidance_counts.table(columns)
    assert all(c.label in text and c.count_text.split(" right")[0] in text for c in columns)
    scene, why = checker_scene(shapes_model, "a cat on the left")
    assert scene is None and "cannot read this prompt" in why
