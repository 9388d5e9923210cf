"""Each ready-made intervention does what it says, at the steps it says."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from diffexplain import interventions as iv
from tests.conftest import PROMPT

STEPS = 3


def run(explainer, **kwargs):
    return explainer.run(PROMPT, num_inference_steps=STEPS, seed=1, decode=False, **kwargs)


@pytest.fixture
def base(explainer):
    return run(explainer)


def test_cfg_off_and_set_guidance(explainer, base):
    off = run(explainer, hooks=[iv.cfg_off(steps=1)])
    assert torch.equal(off["step.guidance", 0], base["step.guidance", 0])
    assert torch.equal(off["step.guidance", 1], off["step.model.cond", 1])
    assert [(r.name, r.step) for r in off.replacements] == [("step.guidance", 1)]
    three = run(explainer, hooks=[iv.set_guidance(3.0)])
    direct = explainer.run(PROMPT, num_inference_steps=STEPS, seed=1, decode=False, guidance_scale=3.0)
    assert torch.allclose(three.final_latents, direct.final_latents, atol=1e-5)
    with pytest.raises(ValueError, match="guidance off"):
        run(explainer, guidance_scale=1.0, hooks=[iv.set_guidance(3.0)])


def test_scale_delta(explainer, base):
    scaled = run(explainer, hooks=[iv.scale_delta(0.5, steps=0)])
    expected = base.reguide(0, 7.5 * 0.5).eps_guided
    assert torch.allclose(scaled["step.guidance", 0], expected, atol=1e-6)
    none = run(explainer, hooks=[iv.scale_delta(0.0, steps=0)])
    assert torch.equal(none["step.guidance", 0], base["step.model.uncond", 0])


def test_swap_prompt(explainer, base):
    swapped = run(explainer, hooks=[iv.swap_prompt(explainer, "a blue circle", from_step=1)])
    blue, _ = explainer.encode_prompt("a blue circle", guidance=False)
    assert torch.equal(swapped["step.prompt.cond", 0], base["step.prompt.cond", 0])
    assert torch.equal(swapped["step.prompt.cond", 1], blue)
    assert torch.equal(swapped["step.pred_x0", 0], base["step.pred_x0", 0])
    assert not torch.equal(swapped["step.pred_x0", 1], base["step.pred_x0", 1])


def test_add_noise_inside_mask_only(explainer, base):
    box = (0.0, 0.5, 0.0, 1.0)  # top half
    noisy = run(explainer, hooks=[iv.add_noise(1, 0.5, seed=3, mask=box)])
    diff = noisy["step.latents", 1] - base["step.latents", 1]
    assert diff[..., 4:, :].abs().max() == 0 and diff[..., :4, :].abs().max() > 0
    assert torch.equal(noisy["step.latents", 0], base["step.latents", 0])
    again = run(explainer, hooks=[iv.add_noise(1, 0.5, seed=3, mask=box)])
    assert torch.equal(again.final_latents, noisy.final_latents)  # seeded: reproducible
    mask = torch.zeros(16, 16)
    mask[:, :8] = 1  # image-size mask, left half
    left = run(explainer, hooks=[iv.add_noise(0, 1.0, mask=mask)])
    diff = left["step.latents", 0] - base["step.latents", 0]
    assert diff[..., :, 4:].abs().max() == 0 and diff[..., :, :4].abs().min() >= 0
    with pytest.raises(ValueError, match="fractions"):
        iv.latent_mask((0.5, 0.2, 0.0, 1.0), 8, 8)


def test_initial_noise_replacements(explainer, base):
    noise = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(0))
    replaced = run(explainer, hooks=[iv.replace_initial_noise(noise)])
    assert torch.equal(replaced["latents.init"][0], noise)  # DDIM: init_noise_sigma = 1
    for kind in iv.PATTERNS:
        trace = run(explainer, hooks=[iv.noise_pattern(kind)])
        x = trace["latents.init"]
        assert torch.allclose(x, iv.pattern(kind, tuple(x.shape)), atol=1e-5)
        assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-4
    with pytest.raises(ValueError, match="unknown pattern"):
        iv.noise_pattern("spiral")
    explainer.set_scheduler("euler")
    euler = run(explainer, hooks=[iv.noise_pattern("stripes")])
    sigma = explainer.scheduler.init_noise_sigma  # σ-space: x_T is scaled by σ_max
    assert (
        abs(float(euler["latents.init"].std()) - float(euler.steps[0].level.sigma ** 2 + 1) ** 0.5)
        < 0.1 * sigma
    )


def test_initial_noise_from_image(explainer, pixel_parts):
    from diffexplain import Explainer

    image = Image.new("RGB", (16, 16), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 8, 16))
    trace = run(explainer, hooks=[iv.initial_noise_from_image(explainer, image)])
    x = trace["latents.init"]
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-4
    pixel = Explainer(**pixel_parts, progress=False).set_scheduler("ddim")
    trace = run(pixel, hooks=[iv.initial_noise_from_image(pixel, image)])
    x = trace["latents.init"]
    assert x.shape == (1, 3, 8, 8) and float(x[0, 2, :, :2].mean()) > float(x[0, 2, :, -2:].mean())
