"""Guidance methods as objects the loop's guidance step calls (``explainer.run(prompt, guider=APG())``).

``CFG`` is classifier-free guidance with the classic pipelines' knobs (``rescale``: diffusers'
``guidance_rescale``; a step interval); ``APG`` is adaptive projected guidance; ``CFGZeroStar`` is CFG-Zero*; ``CFGPlusPlus`` is DDIM CFG++, a sampler-stage method (it also
replaces the scheduler's step); ``RectifiedCFGPlusPlus`` is Rectified-CFG++ for flow models (a
predictor-corrector with a second model evaluation per step); ``ZImageGuidance`` is Z-Image's CFG with
its normalisation and truncation, ``QwenImageGuidance`` Qwen-Image's true CFG with its norm rescale per token.
diffusers' own guiders (``diffusers.guiders``) that combine ε_c and ε_u are taken too (``DiffusersGuider``). Without a guider the
loop guides exactly as it always did: ε̂ = ε_u + w·(ε_c − ε_u).
"""

from diffexplain.guiders.apg import APG
from diffexplain.guiders.base import GUIDERS, GuidanceStep, Guider, guider_from_json
from diffexplain.guiders.cfg import CFG
from diffexplain.guiders.cfg_pp import CFGPlusPlus
from diffexplain.guiders.from_diffusers import DiffusersGuider
from diffexplain.guiders.qwen_image import QwenImageGuidance
from diffexplain.guiders.rectified_cfg_pp import RectifiedCFGPlusPlus
from diffexplain.guiders.z_image import ZImageGuidance
from diffexplain.guiders.zero_star import CFGZeroStar

__all__ = [
    "APG",
    "CFG",
    "CFGPlusPlus",
    "CFGZeroStar",
    "DiffusersGuider",
    "GUIDERS",
    "GuidanceStep",
    "QwenImageGuidance",
    "RectifiedCFGPlusPlus",
    "ZImageGuidance",
    "QwenImageGuidance",
    "RectifiedCFGPlusPlus",
    "ZImageGuidance",
    "Guider",
    "guider_from_json",
]
