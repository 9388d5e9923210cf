"""The guidance methods a widget or a benchmark offers side by side, by label, with their settings."""

from __future__ import annotations

from typing import Any

from diffexplain.guiders.apg import APG
from diffexplain.guiders.base import Guider
from diffexplain.guiders.cfg import CFG
from diffexplain.guiders.cfg_pp import CFGPlusPlus
from diffexplain.guiders.zero_star import CFGZeroStar

PLAIN = "CFG (ε_u + w·Δ)"


UNET_MIDDLE = "mid_block.attentions.0.transformer_blocks"  # a U-Net's middle transformer block


def method_menu(scheduler: Any = None, model: Any = None) -> dict[str, Guider | None]:
    """Label → guider (None: the loop's own ε_u + w·Δ). CFG++ is offered where the scheduler is DDIM
    (it replaces DDIM's update); CFG-Zero* without zero init, which suits ε models as well as flow ones;
    PAG (diffusers' ``PerturbedAttentionGuidance`` with its default scale and steps, the middle block's
    self-attention perturbed, as the PAG paper does for SD) where ``model`` is a U-Net with that block."""
    menu: dict[str, Guider | None] = {
        PLAIN: None,
        "CFG + rescale 0.7": CFG(rescale=0.7),
        "CFG in steps 20–80 %": CFG(start=0.2, stop=0.8),
        "APG (β = −0.5)": APG(momentum=-0.5),
        "CFG-Zero*": CFGZeroStar(zero_init_steps=0),
    }
    if scheduler is None or type(scheduler).__name__ == "DDIMScheduler":
        menu["CFG++ (λ = 0.6)"] = CFGPlusPlus(lam=0.6)
    if model is not None and UNET_MIDDLE in dict(model.named_modules()):
        menu["PAG (middle block)"] = pag_unet()
    return menu


def pag_unet() -> Guider:
    """diffusers' PAG on a U-Net's middle block (its default scale 2.8 and steps 1–20 %), as a guider."""
    import logging

    from diffusers.guiders import PerturbedAttentionGuidance
    from diffusers.hooks import LayerSkipConfig

    from diffexplain.guiders.from_diffusers import DiffusersGuider

    quiet = logging.getLogger("diffusers.guiders.guider_utils")
    level, quiet.level = quiet.level, logging.ERROR  # its "experimental" notice, once per widget
    try:
        pag = PerturbedAttentionGuidance(
            perturbed_guidance_config=LayerSkipConfig(
                indices=[0], fqn=UNET_MIDDLE, skip_attention=False, skip_attention_scores=True, skip_ff=False
            )
        )
    finally:
        quiet.level = level
    return DiffusersGuider(pag)
