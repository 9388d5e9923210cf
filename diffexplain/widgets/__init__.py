"""Jupyter widgets over traces: each reads a ``Trace`` and asks an ``Explainer`` for new ones (run, fork).

- :class:`StepExplorer`: walk through one trace step by step (x_t, x̂0, ε_c, ε_u, Δ, ε̂, timeline): an
  anywidget that scrubs in the browser (``ClassicStepExplorer``: the ipywidgets one it replaced).
- :class:`GuidanceLab`: guidance off vs on, re-guiding at any w without a U-Net call; an anywidget whose
  steps scrub in the browser (``ClassicGuidanceLab``: the ipywidgets one).
- :class:`NoiseLab`: choose the starting noise; add noise at step k and fork.
- :class:`PromptSwap`: switch prompt at step k; sweep k to see when the layout is decided.
- :class:`ForwardProcess`: the forward noising x0 → x_t for several schedules, and the model's x̂0.
- :class:`AttentionMaps`: which pixels read which token, per step and layer; reweight a token and fork.
- :class:`PictureLab`: start from a picture (strength, a mask to inpaint), and DDIM-invert it.
- :class:`TracePlayer`: open a saved trace file and explore it without a model.
- :class:`TwoDialects`: the ε model and the flow model on one prompt and seed, one step slider.
- :class:`ToyPaths`: the 2-D toy of both dialects, the paths samples take from noise to data.

Plots show as plotly figures, or as PNG pictures drawn in the kernel where plotly cannot run in the
page (Colab, classic Notebook 6): :func:`set_plot_mode` or ``DIFFEXPLAIN_PLOTS=plotly|image|auto``.
"""

from diffexplain.widgets.attention_maps import AttentionMaps
from diffexplain.widgets.classic_attention_maps import (
    ClassicAttentionMaps as ClassicAttentionMaps,  # ipywidgets
)
from diffexplain.widgets.classic_forward_process import (
    ClassicForwardProcess as ClassicForwardProcess,
)  # ipywidgets
from diffexplain.widgets.classic_guidance_lab import ClassicGuidanceLab as ClassicGuidanceLab  # ipywidgets
from diffexplain.widgets.classic_noise_lab import ClassicNoiseLab as ClassicNoiseLab  # ipywidgets
from diffexplain.widgets.classic_picture_lab import ClassicPictureLab as ClassicPictureLab  # ipywidgets
from diffexplain.widgets.classic_prompt_swap import ClassicPromptSwap as ClassicPromptSwap  # ipywidgets
from diffexplain.widgets.classic_step_explorer import ClassicStepExplorer as ClassicStepExplorer  # ipywidgets
from diffexplain.widgets.classic_toy_paths import ClassicToyPaths as ClassicToyPaths  # ipywidgets
from diffexplain.widgets.classic_two_dialects import ClassicTwoDialects as ClassicTwoDialects  # ipywidgets
from diffexplain.widgets.figures import plot_mode as plot_mode  # the plot switch: not a widget,
from diffexplain.widgets.figures import set_plot_mode as set_plot_mode  # so not in __all__
from diffexplain.widgets.forward_process import ForwardProcess
from diffexplain.widgets.guidance_lab import GuidanceLab
from diffexplain.widgets.noise_lab import NoiseLab
from diffexplain.widgets.picture_lab import PictureLab
from diffexplain.widgets.prompt_swap import PromptSwap
from diffexplain.widgets.step_explorer import StepExplorer
from diffexplain.widgets.toy_paths import ToyPaths
from diffexplain.widgets.trace_player import TracePlayer
from diffexplain.widgets.two_dialects import TwoDialects

__all__ = [
    "AttentionMaps",
    "ForwardProcess",
    "GuidanceLab",
    "NoiseLab",
    "PictureLab",
    "PromptSwap",
    "StepExplorer",
    "ToyPaths",
    "TracePlayer",
    "TwoDialects",
]
