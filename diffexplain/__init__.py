"""diffexplain: see inside text-to-image diffusion, and change it while it runs."""

from diffexplain import interventions, schedules
from diffexplain.cascade import Cascade
from diffexplain.cascade_trace import CascadeTrace
from diffexplain.errors import TraceFileError, TraceKeyError
from diffexplain.explainer import Explainer
from diffexplain.families import FAMILIES, Family
from diffexplain.fork import fork
from diffexplain.guidance import guide
from diffexplain.hooks import Hook, HookContext, Replacement
from diffexplain.models.default import load_default, load_flow_default, load_model
from diffexplain.models.pixel_cascade import load_pixel_cascade
from diffexplain.names import HOOK_NAMES, HOOK_POINTS, HookPoint
from diffexplain.noise_levels import NoiseLevel
from diffexplain.scheduler_state import SCHEDULER_NAMES
from diffexplain.trace import Reguided, StepRecord, Trace
from diffexplain.version import __version__

__all__ = [
    "HOOK_NAMES",
    "HOOK_POINTS",
    "SCHEDULER_NAMES",
    "FAMILIES",
    "Cascade",
    "CascadeTrace",
    "Explainer",
    "Family",
    "Hook",
    "HookContext",
    "HookPoint",
    "NoiseLevel",
    "Reguided",
    "Replacement",
    "StepRecord",
    "Trace",
    "TraceFileError",
    "TraceKeyError",
    "__version__",
    "fork",
    "guide",
    "interventions",
    "load_default",
    "load_flow_default",
    "load_model",
    "load_pixel_cascade",
    "schedules",
]
