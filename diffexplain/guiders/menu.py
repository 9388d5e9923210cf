"""The guidance methods a widget or a benchmark offers side by side, by label, with their settings."""

from __future__ import annotations

from typing import Any

from diffexplain.guiders.apg import APG
from diffexplain.guiders.base import Guider
from diffexplain.guiders.cfg import CFG
from diffexplain.guiders.cfg_pp import CFGPlusPlus
from diffexplain.guiders.zero_star import CFGZeroStar

PLAIN = "CFG (ε_u + w·Δ)"


def method_menu(scheduler: Any = None) -> dict[str, Guider | None]:
    """Label → guider (None: the loop's own ε_u + w·Δ). CFG++ is offered where the scheduler is DDIM
    (it replaces DDIM's update); CFG-Zero* without zero init, which suits ε models as well as flow ones."""
    menu: dict[str, Guider | None] = {
        PLAIN: None,
        "CFG + rescale 0.7": CFG(rescale=0.7),
        "CFG in steps 20–80 %": CFG(start=0.2, stop=0.8),
        "APG (β = −0.5)": APG(momentum=-0.5),
        "CFG-Zero*": CFGZeroStar(zero_init_steps=0),
    }
    if scheduler is None or type(scheduler).__name__ == "DDIMScheduler":
        menu["CFG++ (λ = 0.6)"] = CFGPlusPlus(lam=0.6)
    return menu
