"""diffexplain: see inside text-to-image diffusion, and change it while it runs."""

from diffexplain.names import HOOK_NAMES, HOOK_POINTS, HookPoint

__version__ = "0.1.0"

__all__ = ["HOOK_NAMES", "HOOK_POINTS", "HookPoint", "__version__"]
