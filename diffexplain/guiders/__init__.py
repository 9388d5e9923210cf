"""Guidance methods as objects the loop's guidance step calls (``explainer.run(prompt, guider=APG())``).

``CFG`` is classifier-free guidance with the classic pipelines' knobs (``rescale``: diffusers'
``guidance_rescale``; a step interval); ``APG`` is adaptive projected guidance. Without a guider the
loop guides exactly as it always did: ε̂ = ε_u + w·(ε_c − ε_u).
"""

from diffexplain.guiders.apg import APG
from diffexplain.guiders.base import GUIDERS, GuidanceStep, Guider, guider_from_json
from diffexplain.guiders.cfg import CFG

__all__ = ["APG", "CFG", "GUIDERS", "GuidanceStep", "Guider", "guider_from_json"]
