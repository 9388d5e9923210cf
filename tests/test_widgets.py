"""Python-level tests of the widgets: move a control, press a button, check pictures and figures change.

Tiny random parts (pictures are noise, which is fine for the logic), 3 inference steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
import torch

from diffexplain import Explainer, Trace
from diffexplain.probe import trace_fingerprint, unet_fingerprint
from diffexplain.widgets import (
    AttentionMaps,
    ForwardProcess,
    GuidanceLab,
    NoiseLab,
    PromptSwap,
    StepExplorer,
    TracePlayer,
)

PROMPT = "a red circle on the left"
STEPS = 3  # PNDM makes 4 loop steps of 3 inference steps


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: far faster for tiny models on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ex(parts: dict) -> Explainer:
    """One Explainer for the module (shared parts; tests never modify it)."""
    return Explainer(**parts, progress=False)


@pytest.fixture(scope="module")
def trace_on(ex: Explainer) -> Trace:
    """A guided run (w = 5)."""
    return ex.run(PROMPT, num_inference_steps=STEPS, seed=0, guidance_scale=5.0)


@contextmanager
def unet_calls(explainer: Explainer) -> Iterator[list[int]]:
    """Count U-Net forward calls inside the block."""
    calls: list[int] = []
    handle = explainer.unet.register_forward_hook(lambda *args: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def errors(widget) -> str:
    """All text in a widget's output area."""
    return "".join(o.get("text", "") for o in widget.output.outputs)


def assert_clean(widget) -> None:
    """No error in the output area or the status line."""
    assert errors(widget) == "", errors(widget)
    assert "Error" not in widget.status.value


# ---- StepExplorer -----------------------------------------------------------------------------------
def test_step_explorer_slider_changes_pictures_and_timeline(trace_on: Trace, ex: Explainer) -> None:
    w = StepExplorer(trace_on)
    assert w.explainer is ex  # taken from the trace
    before = {k: w.images[k].value for k in ("xt", "x0", "eps_c", "eps_u", "delta", "guided", "channels")}
    marker, unet_row = w.fig.data[5].x, w.unet_row.value
    w.slider.value = 2
    for key, value in before.items():
        assert w.images[key].value != value, key
    assert w.fig.data[5].x == (2,) and marker == (0,)
    assert w.fig.layout.shapes[0].x0 == 2
    assert w.unet_row.value != unet_row
    assert f"same weights at all {len(trace_on)} steps" in w.unet_row.value
    assert unet_fingerprint(ex) in w.unet_row.value
    assert len(w.fig.data[0].y) == len(trace_on) and len(w.fig.data[2].y) == len(trace_on)
    decoded = w.images["x0"].value
    w.preview.value = True  # fast latent preview instead of the VAE
    assert w.images["x0"].value != decoded
    assert_clean(w)


def test_step_explorer_guidance_off_trace(ex: Explainer) -> None:
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=0, guidance_scale=1.0)
    w = StepExplorer(trace)
    assert w.fig.data[1].x == () and w.fig.data[2].x == ()  # no ε_u, no Δ
    assert "guidance off" in w.info.value
    before = w.images["eps_c"].value
    w.slider.value = 1
    assert w.images["eps_c"].value != before
    assert_clean(w)


def test_fingerprint_is_stable_and_weight_sensitive(ex: Explainer, trace_on: Trace) -> None:
    from diffexplain.probe import weight_fingerprint
    from tests.tiny_parts import tiny_unet

    assert trace_fingerprint(trace_on) == unet_fingerprint(ex)
    assert weight_fingerprint(tiny_unet(seed=1)) != weight_fingerprint(tiny_unet(seed=2))
    assert weight_fingerprint(tiny_unet(seed=1)) == weight_fingerprint(tiny_unet(seed=1))


# ---- GuidanceLab ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab(ex: Explainer) -> GuidanceLab:
    return GuidanceLab(ex, PROMPT, seed=0, guidance_scale=5.0, num_inference_steps=STEPS)


def test_guidance_slider_reguides_without_unet_call(lab: GuidanceLab, ex: Explainer) -> None:
    assert lab.off.settings["guidance_scale"] == 1.0 and lab.on.settings["guidance_scale"] == 5.0
    assert lab.progress.value == lab.progress.max == len(lab.on)  # the progress bar followed the run
    strip, push = lab.strip.value, lab.fig.data[1].y
    with unet_calls(ex) as calls:
        lab.scale.value = 9.0
    assert calls == []
    assert lab.strip.value != strip
    assert lab.fig.data[1].y != push
    assert_clean(lab)


def test_guidance_run_at_scale_runs_the_loop(lab: GuidanceLab, ex: Explainer) -> None:
    lab.scale.value = 3.0
    on_image = lab.images["on"].value
    with unet_calls(ex) as calls:
        lab.run_scale_button.click()
    assert len(calls) == len(lab.on)
    assert lab.on.settings["guidance_scale"] == 3.0
    assert lab.images["on"].value != on_image
    assert_clean(lab)


def test_guidance_off_for_a_step_range_forks(lab: GuidanceLab) -> None:
    lab.range.value = (1, 2)
    image, delta = lab.images["range"].value, lab.fig.data[2].y
    lab.range_button.click()
    ranged = lab.ranged
    assert ranged is not None and ranged.forked_from == 1
    assert torch.equal(ranged["step.next", 0], lab.on["step.next", 0])  # step 0 copied
    assert not torch.equal(ranged["step.guidance", 1], lab.on["step.guidance", 1])
    assert torch.equal(ranged["step.guidance", 1], ranged["step.model.cond", 1])  # ε̂ = ε_c
    assert lab.images["range"].value != image
    assert lab.fig.data[2].y != delta
    assert_clean(lab)


# ---- GuidanceLab's seed grid (#18) --------------------------------------------------------------------
def grid_state(lab: GuidanceLab) -> list[list[bytes]]:
    return [[image.value for image in column] for column in lab.grid.images]


@pytest.mark.slow
def test_seed_grid_counts_and_borders_follow_the_checker() -> None:
    from diffexplain.data.checker import score
    from diffexplain.guidance_counts import SWEEP_SCALES
    from diffexplain.models.default import load_default
    from diffexplain.widgets.seed_grid import RIGHT_BORDER, WRONG_BORDER

    shapes = load_default(progress=False)
    prompt = "a red circle on the left and a blue square on the right"
    lab = GuidanceLab(shapes, prompt, seed=3, guidance_scale=5.0, num_inference_steps=5)
    empty = grid_state(lab)
    lab.count_seeds()
    grid = lab.grid
    assert [len(column) for column in grid.images] == [12, 12, 12]
    assert all(value not in empty[0] for column in grid_state(lab) for value in column)  # no placeholder left
    assert [c.guidance_scale for c in grid.columns] == [0.0, 1.0, 5.0]
    assert grid.titles[0].value == "<b>no prompt (w = 0)</b>" and "w = 5" in grid.titles[2].value
    for column, images, label in zip(grid.columns, grid.images, grid.count_labels, strict=True):
        assert column.seeds == tuple(range(3, 15))  # from the seed box on
        assert column.verdicts == tuple(score(im, prompt).all_right for im in column.images)
        assert label.value == f"<b>{sum(column.verdicts)} of 12 right</b>"
        for image, right in zip(images, column.verdicts, strict=True):
            assert image.layout.border == (RIGHT_BORDER if right else WRONG_BORDER)
            assert ("dx-right" in image._dom_classes) == right and ("dx-wrong" in image._dom_classes) != right
    assert grid.columns[2].right >= grid.columns[0].right  # the prompt's scene, not a random one
    assert "right" in lab.status.value and lab.progress.value == lab.progress.max
    lab.sweep()
    assert list(grid.fig.data[0].x) == list(SWEEP_SCALES)
    assert list(grid.fig.data[0].y) == [c.share for c in grid.sweep_columns]
    assert list(grid.fig.data[1].y) == [c.diversity for c in grid.sweep_columns]
    assert grid.sweep_columns[0] is grid.columns[0]  # same settings: counted once
    assert "w = 7.5" in grid.sweep_table.value
    assert_clean(lab)


def test_seed_grid_hides_verdicts_for_a_model_the_checker_cannot_read(ex: Explainer) -> None:
    from diffexplain.widgets.seed_grid import NO_BORDER

    lab = GuidanceLab(ex, PROMPT, seed=0, guidance_scale=5.0, num_inference_steps=STEPS, seeds=4)
    lab.count_seeds()
    assert [len(column) for column in lab.grid.images] == [4, 4, 4]
    assert all(c.verdicts is None for c in lab.grid.columns)
    assert all(label.value == "<b>4 pictures</b>" for label in lab.grid.count_labels)
    assert all(image.layout.border == NO_BORDER for column in lab.grid.images for image in column)
    assert "no verdicts" in lab.grid.note.value and "not trained" in lab.grid.note.value
    lab.sweep()
    assert list(lab.grid.fig.data[0].y) == [] and len(lab.grid.fig.data[1].y) == 7  # diversity only
    old_cell = lab.grid.images[0][0]
    lab.grid.n_seeds.value = 5
    lab.count_seeds()
    assert [len(column) for column in lab.grid.images] == [5, 5, 5] and lab.grid.columns[0].n == 5
    assert old_cell.comm is None  # the old cells were closed, not left behind in the kernel
    assert_clean(lab)


def test_stop_mid_grid_keeps_the_finished_columns_and_the_grid_runs_again(ex: Explainer) -> None:
    from tests.test_jobs import ManualLoop

    lab = GuidanceLab(ex, PROMPT, seed=0, guidance_scale=5.0, num_inference_steps=STEPS, seeds=4)
    loop = lab.schedule = ManualLoop()
    lab.grid.count_button.click()
    assert lab.work is not None and not lab.stop_button.disabled
    assert all(b.disabled for b in lab.buttons()) and lab.grid.count_button.disabled
    per_run = len(ex.run(PROMPT, num_inference_steps=STEPS, seed=0, guidance_scale=1.0))
    for _ in range(per_run + 2):  # the w = 0 column, then two steps of the w = 1 one
        loop.turn()
    assert 0 < lab.progress.value < lab.progress.max
    lab.stop_button.click()
    loop.run_out()
    assert lab.work is None and lab.stop_button.disabled and not any(b.disabled for b in lab.buttons())
    assert lab.grid.columns[0] is not None and lab.grid.columns[1:] == [None, None]
    assert [label.value for label in lab.grid.count_labels[1:]] == ["—", "—"]
    assert "stopped" in lab.status.value
    first = lab.grid.columns[0]
    lab.grid.count_button.click()
    loop.run_out()
    assert all(c is not None for c in lab.grid.columns) and lab.grid.columns[0] is first  # kept, not re-run
    assert_clean(lab)


def test_a_new_prompt_clears_the_old_grid(ex: Explainer) -> None:
    lab = GuidanceLab(ex, PROMPT, seed=0, guidance_scale=5.0, num_inference_steps=STEPS, seeds=4)
    empty = grid_state(lab)
    lab.count_seeds()
    lab.sweep()
    assert grid_state(lab) != empty and list(lab.grid.fig.data[1].x)
    lab.prompt.value = "a green triangle at the top"
    lab.run_button.click()
    assert grid_state(lab) == empty and lab.grid.columns == [None, None, None]
    assert all(label.value == "—" for label in lab.grid.count_labels)
    assert list(lab.grid.fig.data[1].x) == [] and lab.grid.sweep_table.value == ""
    lab.count_seeds()  # the new prompt's pictures, not the cached old ones
    assert lab.grid.columns[1].images[0] is not None and grid_state(lab)[1] != empty[1]
    assert_clean(lab)


# ---- NoiseLab ---------------------------------------------------------------------------------------
def test_noise_lab_injection_forks_at_k(ex: Explainer) -> None:
    nl = NoiseLab(ex, PROMPT, seed=0, guidance_scale=5.0, num_inference_steps=STEPS)
    region = nl.images["xk"].value
    nl.use_rect.value = True
    assert nl.images["xk"].value != region  # the rectangle is drawn
    nl.rows.value, nl.cols.value = (0, 50), (50, 100)
    nl.step.value, nl.strength.value = 2, 2.0
    branch, diff = nl.images["branch"].value, nl.images["diff"].value
    nl.inject_button.click()
    b, o = nl.branch, nl.original
    assert b is not None and b.forked_from == 2
    for i in range(2):
        assert torch.equal(b["step.latents", i], o["step.latents", i])
    added = b["step.latents", 2] - o["step.latents", 2]
    h, w = added.shape[-2:]
    assert added[..., : h // 2, w // 2 :].abs().sum() > 0  # noise inside the rectangle
    assert added[..., h // 2 :, :].abs().sum() == 0 and added[..., :, : w // 2].abs().sum() == 0
    assert nl.images["branch"].value != branch and nl.images["diff"].value != diff
    assert_clean(nl)


def test_noise_lab_start_sources(ex: Explainer) -> None:
    nl = NoiseLab(ex, PROMPT, num_inference_steps=STEPS)
    init = nl.images["init"].value
    nl.source.value = "checkerboard"
    nl.run_button.click()
    assert nl.images["init"].value != init
    image_init = nl.images["init"].value
    nl.source.value = "image"  # dataset picture #0, encoded by the VAE
    nl.run_button.click()
    assert nl.images["init"].value != image_init
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    nl.set_initial_noise(noise)
    assert nl.source.value == "my tensor"
    sigma = ex.scheduler.init_noise_sigma
    torch.testing.assert_close(nl.original["latents.init"], noise * sigma)
    assert_clean(nl)


def few_steps_warning(explainer: Explainer) -> str:
    """The text of the warning a 2-step run gives (DDIM's 'leading' spacing starts at t = 501)."""
    with pytest.warns(UserWarning) as caught:
        explainer.run(PROMPT, num_inference_steps=2, seed=0)
    return str(caught[0].message)


@pytest.mark.filterwarnings("default:num_inference_steps=:UserWarning")  # as in a notebook
def test_noise_lab_keeps_a_run_warnings_when_fewer_steps_pull_k_down(parts: dict) -> None:
    from tests.test_jobs import ManualLoop

    own = Explainer(**parts, progress=False).set_scheduler("ddim")
    warning = few_steps_warning(own)
    nl = NoiseLab(own, PROMPT, num_inference_steps=6)
    nl.step.value = 4
    loop = nl.schedule = ManualLoop()
    nl.steps.value = 2  # fewer steps than k: the slider's clamp redraws once the run ends
    nl.run_button.click()
    loop.run_out()
    assert nl.step.value <= nl.step.max == 1 and len(nl.original) == 2
    assert errors(nl) == f"UserWarning: {warning}\n"
    nl.steps.value = 6  # a run that does not warn: the old warning goes
    nl.run_button.click()
    loop.run_out()
    assert_clean(nl)


@pytest.mark.filterwarnings("default:num_inference_steps=:UserWarning")  # as in a notebook
def test_guidance_lab_shows_each_run_warning_once(parts: dict) -> None:
    from tests.test_jobs import ManualLoop

    own = Explainer(**parts, progress=False).set_scheduler("ddim")
    warning = few_steps_warning(own)
    lab = GuidanceLab(own, PROMPT, guidance_scale=5.0, num_inference_steps=6)
    loop = lab.schedule = ManualLoop()
    lab.steps.value = 2  # both runs (w = 1 and w = 5) warn alike
    lab.run_button.click()
    loop.run_out()
    assert errors(lab) == f"UserWarning: {warning}\n"
    lab.run_button.click()  # the next action shows its own warnings: once again, not piled up
    loop.run_out()
    assert errors(lab) == f"UserWarning: {warning}\n"


# ---- PromptSwap -------------------------------------------------------------------------------------
def test_prompt_swap_and_sweep(ex: Explainer) -> None:
    ps = PromptSwap(ex, PROMPT, "a blue square on the right", num_inference_steps=STEPS, sweep_points=3)
    ps.step.value = 2
    swap = ps.images["swap"].value
    ps.swap_button.click()
    s = ps.swapped
    assert s is not None and s.forked_from == 2 and s.settings["prompt"] == "a blue square on the right"
    assert torch.equal(s["step.next", 1], ps.original["step.next", 1])
    assert ps.images["swap"].value != swap
    strip = ps.strip.value
    ps.sweep_button.click()
    assert sorted(ps.sweep) == ps.sweep_steps() == [0, 2, 3]
    assert all(ps.sweep[k].forked_from == k for k in ps.sweep)
    assert ps.strip.value != strip
    assert list(ps.fig.data[0].x) == [0, 2, 3]
    assert_clean(ps)


# ---- ForwardProcess ---------------------------------------------------------------------------------
def test_forward_process_without_model() -> None:
    fp = ForwardProcess(t=100)
    xt, marker, abar = fp.images["xt"].value, fp.fig.data[4].y, fp.fig.data[0].y
    fp.t.value = 900
    assert fp.images["xt"].value != xt and fp.fig.data[4].y != marker
    fp.schedule.value = "squaredcos_cap_v2"
    assert fp.fig.data[0].y != abar
    clean = fp.images["x0"].value
    fp.dataset_index.value = 5
    assert fp.images["x0"].value != clean
    assert_clean(fp)


def test_forward_process_with_model(ex: Explainer) -> None:
    fp = ForwardProcess(ex, t=200)
    assert fp.prompt.value  # the dataset caption
    guess = fp.images["model_x0"].value
    with unet_calls(ex) as calls:
        fp.t.value = 800
    assert len(calls) == 1  # one U-Net evaluation for the guess
    assert fp.images["model_x0"].value != guess
    assert_clean(fp)


# ---- errors land in the widget ---------------------------------------------------------------------
def test_callback_errors_show_in_the_widget_output(ex: Explainer, monkeypatch: pytest.MonkeyPatch) -> None:
    own = Explainer(**{k: getattr(ex, k) for k in ("unet", "scheduler", "tokenizer", "text_encoder", "vae")})
    own.progress = False
    ps = PromptSwap(own, PROMPT, "a blue square", num_inference_steps=STEPS)

    def broken_fork(*args, **kwargs):
        raise RuntimeError("boom from fork")

    monkeypatch.setattr(own, "start_fork", broken_fork)
    ps.swap_button.click()  # must not raise
    assert "boom from fork" in errors(ps) and "Traceback" in errors(ps)
    assert "RuntimeError" in ps.status.value


def assert_told_on_the_status_line(widget, message: str) -> None:
    """A typed value refused: the message on the status line, nothing (no traceback) in the output area."""
    assert message in widget.status.value, widget.status.value
    assert "Traceback" not in widget.status.value and errors(widget) == ""


@pytest.mark.parametrize("kernel", [False, True], ids=["from Python", "in a kernel"])
def test_a_bad_seed_is_told_on_the_status_line_without_a_traceback(ex: Explainer, kernel: bool) -> None:
    from tests.test_jobs import ManualLoop

    lab = GuidanceLab(ex, PROMPT, num_inference_steps=STEPS)
    nl = NoiseLab(ex, PROMPT, num_inference_steps=STEPS)
    ps = PromptSwap(ex, PROMPT, "a blue square", num_inference_steps=STEPS)
    loops = []
    for widget in (lab, nl, ps):
        if kernel:
            widget.schedule = ManualLoop()
            loops.append(widget.schedule)
    cases = [  # (widget, its seed box, the button that reads it, the picture a run would change)
        (lab, lab.seed, lab.run_button, "on"),
        (lab, lab.seed, lab.grid.count_button, "on"),
        (nl, nl.seed, nl.run_button, "original"),
        (nl, nl.noise_seed, nl.inject_button, "branch"),
        (ps, ps.seed, ps.run_button, "a"),
    ]
    for widget, box, press, picture in cases:
        before = widget.images[picture].value
        good = box.value
        box.value = "-1"
        press.click()
        for loop in loops:
            loop.run_out()
        assert_told_on_the_status_line(widget, f"the {box.description} box holds '-1'")
        assert widget.images[picture].value == before  # nothing ran
        box.value = good
    lab.scale.value = 6.0  # the next thing that works clears the message
    assert "holds" not in lab.status.value
    fp = ForwardProcess(t=100)
    fp.seed.value = "1e30"  # the slider-driven widget reads its box when it changes
    assert_told_on_the_status_line(fp, "the noise seed box holds '1e30': type a whole number from 0")
    fp.seed.value = "7"
    assert_clean(fp)
    assert "holds" not in fp.status.value


# ---- TracePlayer ------------------------------------------------------------------------------------
def test_trace_player_without_a_model(trace_on: Trace, tmp_path) -> None:
    path = tmp_path / "run.trace"
    trace_on.save(path, previews=False)  # a file without saved pictures (with them: tests/test_previews.py)
    tp = TracePlayer(str(path))
    assert tp.explorer is not None and tp.explorer.explainer is None
    assert tp.explorer.preview.value and tp.explorer.preview.disabled  # no VAE: fast preview only
    xt, marker = tp.explorer.images["xt"].value, tp.explorer.fig.data[5].x
    tp.explorer.slider.value = 3
    assert tp.explorer.images["xt"].value != xt and tp.explorer.fig.data[5].x != marker
    assert "same weights" in tp.explorer.unet_row.value or "fingerprint" in tp.explorer.unet_row.value
    assert_clean(tp)
    assert_clean(tp.explorer)  # its own output area: the preview toggle once redrew before the series existed

    bad = tmp_path / "bad.trace"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    tp.path.value = str(bad)
    tp.load_button.click()
    assert_told_on_the_status_line(tp, "cannot load trace file")
    assert tp.trace is not None and len(tp.trace) == len(trace_on)  # the loaded trace stays

    tp.path.value = str(tmp_path / "missing.trace")
    tp.load_button.click()
    assert_told_on_the_status_line(tp, "missing.trace")
    assert "that is no file" in tp.status.value
    for typed, message in (("", "the trace file box is empty"), (str(tmp_path), "that is a folder")):
        tp.path.value = typed
        tp.load_button.click()
        assert_told_on_the_status_line(tp, message)
    tp.path.value = str(path)
    tp.load_button.click()
    assert_clean(tp)
    assert "loaded" in tp.status.value


def test_trace_player_upload(trace_on: Trace, tmp_path) -> None:
    path = tmp_path / "run.trace"
    trace_on.save(path)
    tp = TracePlayer()
    content = path.read_bytes()
    upload = {"name": "run.trace", "type": "", "size": len(content), "content": memoryview(content)}
    tp.upload.value = ({**upload, "last_modified": datetime.now(UTC)},)
    assert tp.trace is not None and len(tp.trace) == len(trace_on)
    assert_clean(tp)
    assert_clean(tp.explorer)


def test_weight_fingerprint_follows_weight_changes() -> None:
    from diffexplain.probe import weight_fingerprint
    from tests.tiny_parts import tiny_unet

    unet, other = tiny_unet(seed=1), tiny_unet(seed=2)
    first = weight_fingerprint(unet)
    assert weight_fingerprint(unet) == first  # cached: same weights, same hash
    with torch.no_grad():
        next(unet.parameters()).add_(1.0)  # an in-place edit
    edited = weight_fingerprint(unet)
    assert edited != first
    unet.load_state_dict(other.state_dict())  # copies in place
    assert weight_fingerprint(unet) == weight_fingerprint(other) != edited


# ---- AttentionMaps ------------------------------------------------------------------------------------
def test_attention_maps_controls_change_the_map(trace_on: Trace, ex: Explainer) -> None:
    widget = AttentionMaps(trace_on, token="red")
    assert_clean(widget)
    labels = [label for label, _ in widget.token.options]
    assert len(labels) == len(trace_on.tokens) and "(start)" in labels[0] and "(padding)" in labels[-1]
    assert widget.token.label.endswith("red") and widget.step.max == len(trace_on) - 1
    assert [v for _, v in widget.layer.options][1:] == list(trace_on.attention_resolutions)
    shown = {key: image.value for key, image in widget.images.items()}
    widget.step.value = 0
    assert widget.images["overlay"].value != shown["overlay"] and widget.images["map"].value != shown["map"]
    torch.testing.assert_close(widget.map(), trace_on.attention("red", steps=0)[0])
    bars = list(widget.fig.data[0].y)
    widget.branch.value = "uncond"
    assert list(widget.fig.data[0].y) != bars
    torch.testing.assert_close(
        widget.map(), trace_on.attention(widget.token.value, steps=0, branch="uncond")[0]
    )
    widget.branch.value = "cond"
    widget.layer.value = widget.layer.options[1][1]
    torch.testing.assert_close(widget.map(), trace_on.attention("red", steps=0, layers=widget.layer.value)[0])
    widget.all_steps.value = True
    torch.testing.assert_close(widget.map(), trace_on.attention("red", layers=widget.layer.value)[0])
    assert_clean(widget)


def test_attention_maps_reweight_forks_and_shows_the_new_picture(trace_on: Trace, ex: Explainer) -> None:
    widget = AttentionMaps(trace_on, ex, token="red")
    before = widget.images["after"].value
    widget.factor.value, widget.fork_step.value = 0.0, 1
    with unet_calls(ex) as calls:
        widget.fork_button.click()
    assert_clean(widget)
    assert widget.forked is not None and widget.forked.forked_from == 1 and len(calls) == len(trace_on) - 1
    assert widget.images["after"].value != before and widget.progress.value == len(trace_on)
    assert not torch.equal(widget.forked.final_latents, trace_on.final_latents)
    assert "× 0" in widget.status.value


def test_attention_maps_link_and_errors(trace_on: Trace, ex: Explainer) -> None:
    explorer = StepExplorer(trace_on)
    widget = AttentionMaps(trace_on).link(explorer)  # the sliders are linked in the page (jslink)
    assert widget.explainer is ex and not widget.fork_button.disabled  # the trace's own explainer
    plain = ex.run(PROMPT, num_inference_steps=STEPS, seed=0, attention_maps=False)
    shown = AttentionMaps(trace_on)
    shown.set_trace(trace_on)
    shown.guard(shown.set_trace)(plain)
    assert "attention_maps=False" in errors(shown) and "Error" in shown.status.value


def test_trace_player_shows_attention_maps(trace_on: Trace, tmp_path) -> None:
    path = tmp_path / "run.trace"
    trace_on.save(path)
    tp = TracePlayer(str(path))
    assert tp.attention is not None and tp.attention_box.layout.display is None
    assert not tp.attention.preview.value and tp.attention.fork_button.disabled  # the saved x̂0 pictures
    assert_clean(tp)
    assert_clean(tp.attention)


def test_attention_maps_follows_a_new_trace_and_the_uncond_tokens(trace_on: Trace, ex: Explainer) -> None:
    widget = AttentionMaps(trace_on, token="red")
    other = ex.run("a blue circle", num_inference_steps=STEPS, seed=1, negative_prompt="green")
    widget.set_trace(other)  # no "red" in it: the constructor's token= is not used again
    assert_clean(widget)
    assert widget.trace is other and widget.token.label == "1 · a"  # the first word
    widget.branch.value = "uncond"
    assert any("green" in label for label, _ in widget.token.options)  # the negative prompt's tokens
    assert_clean(widget)
    fork = ex.fork(trace_on, 2, prompt="a blue circle")
    widget.set_trace(fork)
    assert widget.step.min == 2  # the steps before k were made with the other prompt


# ---- #19: no stale panels, no old tracebacks ----------------------------------------------------------
def test_a_new_run_clears_every_derived_panel(ex: Explainer) -> None:
    lab = GuidanceLab(ex, PROMPT, seed=0, guidance_scale=5.0, num_inference_steps=STEPS)
    empty_range = lab.images["range"].value
    lab.range_button.click()
    assert lab.images["range"].value != empty_range and "steps" in lab.range_title.value
    lab.prompt.value = "a green triangle at the top"
    lab.run_button.click()
    assert lab.ranged is None and lab.images["range"].value == empty_range
    assert lab.range_title.value == "<b>guidance off in a step range</b>" and list(lab.fig.data[2].x) == []

    nl = NoiseLab(ex, PROMPT, seed=0, guidance_scale=5.0, num_inference_steps=STEPS)
    empty = nl.images["branch"].value, nl.images["diff"].value
    nl.inject_button.click()
    assert nl.images["branch"].value != empty[0]
    nl.run_button.click()
    assert (nl.images["branch"].value, nl.images["diff"].value) == empty
    assert nl.branch_title.value == "<b>new branch</b>"

    ps = PromptSwap(ex, PROMPT, "a blue square on the right", num_inference_steps=STEPS, sweep_points=3)
    assert ps.strip.value  # a placeholder, not a broken image, before the first sweep
    empty = ps.images["swap"].value, ps.strip.value
    ps.swap_button.click()
    ps.sweep_button.click()
    assert ps.images["swap"].value != empty[0] and ps.strip.value != empty[1]
    ps.prompt_a.value = "a red square at the top"
    ps.run_button.click()
    assert (ps.images["swap"].value, ps.strip.value) == empty
    assert all(list(series.x) == [] for series in ps.fig.data)
    for widget in (lab, nl, ps):
        assert_clean(widget)


def test_an_action_that_works_clears_the_previous_error(
    ex: Explainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = Explainer(**{k: getattr(ex, k) for k in ("unet", "scheduler", "tokenizer", "text_encoder", "vae")})
    own.progress = False
    ps = PromptSwap(own, PROMPT, "a blue square", num_inference_steps=STEPS)
    real_fork = own.start_fork

    def broken_fork(*args, **kwargs):
        raise RuntimeError("boom from fork")

    monkeypatch.setattr(own, "start_fork", broken_fork)
    ps.swap_button.click()
    assert "boom from fork" in errors(ps) and "Error" in ps.status.value
    monkeypatch.setattr(own, "start_fork", real_fork)
    ps.swap_button.click()
    assert_clean(ps)  # the old traceback is gone once an action works
    assert ps.swapped is not None


def test_buttons_are_off_while_the_model_runs(ex: Explainer) -> None:
    ps = PromptSwap(ex, PROMPT, "a blue square", num_inference_steps=STEPS)
    seen: list[bool] = []

    def look(x, *, ctx):
        seen.append(all(b.disabled for b in ps.buttons()))

    ps.finish(ps.run_steps(ex, PROMPT, num_inference_steps=STEPS, seed=0, hooks={"step.next": look}))
    assert seen and all(seen)  # no click can queue another run meanwhile
    assert not any(b.disabled for b in ps.buttons())

    def boom(x, *, ctx):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        ps.finish(ps.fork_steps(ex, ps.original, 1, hooks={"step.next": boom}))
    assert not any(b.disabled for b in ps.buttons())  # back after an error too
    nl = NoiseLab(ex, PROMPT, seed=0, num_inference_steps=STEPS)
    nl.inject_button.click()
    assert (
        "nothing is copied" in nl.status.value
        or "step 0 is copied" in nl.status.value
        or "copied" in nl.status.value
    )
