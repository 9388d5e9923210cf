"""The family contract (#30 part 3): required methods are abstract, the parts pick their family by kind
(SD without a VAE is not IF stage I), ambiguous parts name their candidates, and the autoencoder sits
behind one adapter that a family may swap for its own."""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F

from diffexplain import Explainer
from diffexplain import explainer as explainer_module
from diffexplain.families import (
    FAMILIES,
    IF,
    AmbiguousPartsError,
    Family,
    StableDiffusion,
    VaeAdapter,
    family_for_pipeline,
    family_from_parts,
)
from diffexplain.families.base import Conditioning
from diffexplain.families.kandinsky import KandinskyDecoder
from diffexplain.families.sdxl import StableDiffusionXL
from diffexplain.families.vae import MovqAdapter, SdxlVaeAdapter
from tests.conftest import PROMPT
from tests.tiny_families import tiny_if_parts, tiny_vae


def without_scheduler(parts: dict) -> dict:
    return {name: part for name, part in parts.items() if name != "scheduler"}


# ---- required and optional methods --------------------------------------------------------------------
def test_encode_and_predict_are_the_required_methods_and_every_family_has_them():
    assert Family.__abstractmethods__ == frozenset({"encode", "predict"})
    assert all(not inspect.isabstract(family) for family in FAMILIES.values())


def test_a_family_without_a_required_method_cannot_be_instantiated(pixel_parts):
    class NoModelCall(Family):
        name: ClassVar[str] = "test_no_model_call"
        label: ClassVar[str] = "a family that forgot predict"
        pipeline_class: ClassVar[str] = "NoSuchPipeline"
        part_names: ClassVar[tuple[str, ...]] = ("unet",)

        def encode(
            self, prompt: Any, negative_prompt: Any, do_cfg: bool, options: dict[str, Any]
        ) -> tuple[Conditioning, Conditioning | None]:
            return {}, None

    with pytest.raises(TypeError, match=r"NoModelCall.*abstract method.*predict"):
        NoModelCall(unet=pixel_parts["unet"])


def test_every_optional_method_says_it_is_optional_and_what_its_default_does():
    required = {"encode", "predict"}
    for name, member in vars(Family).items():
        function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
        if name.startswith("_") or not inspect.isfunction(function) or name in required:
            continue
        doc = inspect.getdoc(function) or ""
        assert (
            "Optional" in doc or "Not an override" in doc or "not an override" in doc or "Not meant" in doc
        ), name
    for name in required:
        assert "Required" in inspect.getdoc(getattr(Family, name))


# ---- picking the family by the parts' kinds -----------------------------------------------------------
def test_sd_parts_without_a_vae_pick_stable_diffusion_and_if_parts_pick_if(pixel_parts):
    assert explainer_module.family_from_parts is family_from_parts
    assert type(family_from_parts({**without_scheduler(pixel_parts), "vae": None})) is StableDiffusion
    if_parts = tiny_if_parts()
    scheduler = if_parts.pop("scheduler")
    assert set(if_parts) == set(pixel_parts) - {"scheduler", "vae"}  # the same names: the kinds decide
    explainer = Explainer(scheduler=scheduler, progress=False, **if_parts)
    assert type(explainer.family) is IF
    # the U-Net decides, not the text encoder (the embedded pixel cascade's IF reads MiniLM, not T5)
    text = {n: pixel_parts[n] for n in ("tokenizer", "text_encoder")}
    assert type(family_from_parts({"unet": if_parts["unet"], **text})) is IF


def test_parts_that_fit_no_family_by_kind_say_why(pixel_parts):
    if_unet = tiny_if_parts()["unet"]
    with pytest.raises(
        TypeError,
        match=r"no pipeline family takes the parts .*Stable Diffusion 1.x / 2.x takes these names, but its "
        r"unet does not have out_channels = in_channels.*DeepFloyd IF stage I: unet, tokenizer, text_encoder",
    ):
        family_from_parts(
            {**without_scheduler(pixel_parts), "unet": if_unet, "vae": tiny_vae(scaling_factor=1.0)}
        )


class PixelTwin(StableDiffusion):
    """A test-only family whose parts are SD's: registered for one test, then removed."""

    name: ClassVar[str] = "test_pixel_twin"
    label: ClassVar[str] = "SD's twin"
    pipeline_class: ClassVar[str] = "PixelTwinPipeline"


@pytest.fixture
def twin_registered(monkeypatch):
    monkeypatch.setitem(FAMILIES, PixelTwin.name, PixelTwin)  # undone after the test
    yield PixelTwin
    assert FAMILIES[PixelTwin.name] is PixelTwin


def test_parts_that_fit_several_families_name_each_and_how_to_choose(twin_registered, pixel_parts):
    with pytest.raises(AmbiguousPartsError) as error:
        Explainer(**pixel_parts, progress=False)
    message = str(error.value)
    assert isinstance(error.value, TypeError)
    assert "fit more than one pipeline family" in message
    assert "Stable Diffusion 1.x / 2.x (StableDiffusion, StableDiffusionPipeline)" in message
    assert "SD's twin (PixelTwin, PixelTwinPipeline)" in message
    assert "Explainer(family=StableDiffusion(**parts), scheduler=...)" in message
    assert "Explainer(family=PixelTwin(**parts), scheduler=...)" in message
    assert "Explainer.from_pipeline(pipe)" in message
    chosen = Explainer(family=PixelTwin(**without_scheduler(pixel_parts)), scheduler=pixel_parts["scheduler"])
    assert chosen.family.name == "test_pixel_twin"


def test_the_test_family_did_not_leak_into_the_registry():
    assert PixelTwin.name not in FAMILIES


def test_a_pipeline_subclass_picks_its_base_family_and_an_unknown_one_is_named():
    base = type("StableDiffusionPipeline", (), {})
    subclass = type("MyTweakedPipeline", (base,), {})
    assert family_for_pipeline(subclass()) is StableDiffusion
    with pytest.raises(ValueError, match=r"OtherPipeline is not supported.*StableDiffusionPipeline"):
        family_for_pipeline(type("OtherPipeline", (), {})())


# ---- the VAE adapter ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shift_factor", [None, 0.25])
def test_the_default_vae_adapter_gives_what_the_family_computed_before(parts, shift_factor):
    vae = parts["vae"] if shift_factor is None else tiny_vae(scaling_factor=0.7, shift_factor=shift_factor)
    family = StableDiffusion(**{**without_scheduler(parts), "vae": vae})
    adapter = family.vae_adapter()
    assert type(adapter) is VaeAdapter and adapter.vae is vae
    assert family.vae_scale_factor == 2 ** (len(vae.config.block_out_channels) - 1) == 2
    pixels = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    shift = vae.config.shift_factor or 0.0
    with torch.no_grad():
        mean = vae.encode(pixels).latent_dist.mean
        expected = (mean - shift if shift_factor is not None else mean) * vae.config.scaling_factor
        assert torch.equal(family.encode_image(pixels), expected)
        z = expected / vae.config.scaling_factor
        z = z + shift if shift_factor is not None else z
        assert torch.equal(family.decode(expected), vae.decode(z, return_dict=False)[0])


def test_pixel_space_has_no_adapter(pixel_parts):
    family = StableDiffusion(**without_scheduler(pixel_parts))
    latents = torch.randn(1, 3, 8, 8)
    assert family.vae_adapter() is None and family.vae_scale_factor == 1
    assert family.decode(latents) is latents and torch.equal(family.encode_image(latents), latents)


def test_sdxl_and_kandinsky_supply_their_own_adapters(parts):
    holder = SimpleNamespace(vae=parts["vae"])
    assert type(StableDiffusionXL.vae_adapter(holder)) is SdxlVaeAdapter  # type: ignore[arg-type]
    assert KandinskyDecoder.vae_adapter is not Family.vae_adapter
    assert issubclass(MovqAdapter, VaeAdapter)


class FakeDcAe(torch.nn.Module):
    """An autoencoder of another kind, as DC-AE: ``encoder_block_out_channels``, no ``latent_dist``; ×4."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(encoder_block_out_channels=(8, 16, 32), scaling_factor=0.5)
        self.register_buffer("anchor", torch.zeros(()))

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    def encode(self, pixels: torch.Tensor) -> SimpleNamespace:
        pooled = F.avg_pool2d(pixels, 4)
        return SimpleNamespace(latent=torch.cat([pooled, pooled[:, :1]], dim=1))  # 4 channels

    def decode(self, latents: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=F.interpolate(latents[:, :3], scale_factor=4, mode="nearest"))


class DcAeAdapter(VaeAdapter):
    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.encoder_block_out_channels) - 1)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(pixels.to(self.vae.dtype)).latent * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample


class StableDiffusionWithDcAe(StableDiffusion):
    """Only its adapter differs from SD's: the sizes, decoding and encoding follow."""

    def vae_adapter(self) -> DcAeAdapter | None:
        return None if self.vae is None else DcAeAdapter(self.vae)


def test_a_family_with_another_autoencoder_only_supplies_its_adapter(parts):
    family = StableDiffusionWithDcAe(**{**without_scheduler(parts), "vae": FakeDcAe()})
    assert family.vae_scale_factor == 4
    assert family.latent_shape(1, 32, 32) == (1, 4, 8, 8)
    assert family.size_multiple() == (4, "the VAE's scale factor")
    pixels = torch.rand(1, 3, 16, 16) * 2 - 1
    latents = family.encode_image(pixels)
    assert latents.shape == (1, 4, 4, 4) and torch.equal(latents[:, :3], F.avg_pool2d(pixels, 4) * 0.5)
    assert torch.allclose(family.decode(latents), F.interpolate(F.avg_pool2d(pixels, 4), scale_factor=4))
    explainer = Explainer(family=family, scheduler=parts["scheduler"], progress=False).set_scheduler("ddim")
    trace = explainer.run(PROMPT, num_inference_steps=1, seed=0, height=16, width=16)
    assert tuple(trace.final_latents.shape) == (1, 4, 4, 4) and tuple(trace.image.shape) == (1, 3, 16, 16)
