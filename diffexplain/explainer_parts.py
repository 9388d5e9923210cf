"""The model parts an ``Explainer`` exposes by name (``explainer.unet``, ``.vae``, ``.device``...), read from
and written to its family adapter's parts: the pipeline's own attribute names, one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from diffexplain.families.base import Family


class ModelParts:
    """The parts of ``self.family`` as attributes (a mixin of ``Explainer``)."""

    family: Family

    @property
    def model(self) -> Any:
        """The denoiser: a U-Net (SD, SDXL) or a transformer (SD3)."""
        return self.family.model

    @property
    def unet(self) -> Any:
        """The U-Net (SD, SDXL); for a transformer family an ``AttributeError`` that points to ``model``."""
        if self.family.model_attr != "unet":
            raise AttributeError(
                f"{self.family.label} has no U-Net but a {self.family.model_attr}: use explainer.model"
            )
        return self.family.model

    @unet.setter
    def unet(self, module: Any) -> None:
        self.unet  # noqa: B018 - the same AttributeError for a transformer family
        self.family.parts["unet"] = module

    @property
    def tokenizer(self) -> Any:
        """The (first) tokenizer."""
        return self.family.parts["tokenizer"]

    @tokenizer.setter
    def tokenizer(self, tokenizer: Any) -> None:
        self.family.parts["tokenizer"] = tokenizer

    @property
    def text_encoder(self) -> Any:
        """The (first) text encoder."""
        return self.family.parts["text_encoder"]

    @text_encoder.setter
    def text_encoder(self, module: Any) -> None:
        self.family.parts["text_encoder"] = module

    @property
    def vae(self) -> Any | None:
        """The VAE, or None in pixel space."""
        return self.family.vae

    @vae.setter
    def vae(self, module: Any | None) -> None:
        self.family.parts["vae"] = module

    @property
    def device(self) -> torch.device:
        """The device the model is on (where the loop runs)."""
        return self.family.model.device

    @property
    def dtype(self) -> torch.dtype:
        """The model's dtype."""
        return self.family.model.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Image size / latent size: 2^(VAE levels − 1), or 1 in pixel space."""
        return self.family.vae_scale_factor
