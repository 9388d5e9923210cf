"""What the notebooks' setup cell does once diffexplain is importable: Colab's widget manager, and the device.

Every teaching notebook opens with the same setup cell (written by ``scripts/notebook_setup_cell.py``). Its
first half installs diffexplain when it is missing (that has to happen before this module can be
imported); its second half is ``DEVICE = diffexplain.colab.setup()``:

- in Google Colab it turns on Colab's custom widget manager, which widgets other than ipywidgets' own
  (anywidget, plotly's FigureWidget) need before they are displayed;
- it returns ``"cuda"`` when PyTorch sees a CUDA GPU, else ``"cpu"``.

Outside Colab it changes nothing.
"""

from __future__ import annotations

import sys

import torch


def in_colab() -> bool:
    """True inside a Google Colab runtime (Colab imports ``google.colab`` when its kernel starts)."""
    return "google.colab" in sys.modules


def enable_colab_widgets() -> bool:
    """Turn on Colab's custom widget manager; False (and nothing done) outside Colab."""
    if not in_colab():
        return False
    from google.colab import output  # type: ignore[import-not-found]  # only inside Colab

    output.enable_custom_widget_manager()
    return True


def pick_notebook_device() -> str:
    """``"cuda"`` when PyTorch sees a CUDA GPU, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def setup(*, quiet: bool = False) -> str:
    """Prepare a notebook: Colab's widget manager when in Colab; returns the device, ``"cuda"`` or ``"cpu"``.

    Prints one line saying which diffexplain, which device and, in Colab, that the widget manager is on
    (``quiet=True``: nothing printed).
    """
    from diffexplain.version import __version__

    widgets = enable_colab_widgets()
    device = pick_notebook_device()
    if not quiet:
        where = f"cuda ({torch.cuda.get_device_name()})" if device == "cuda" else "cpu (no CUDA GPU found)"
        colab = "; Colab's custom widget manager is on" if widgets else ""
        print(f"diffexplain {__version__}, torch {torch.__version__}, device {where}{colab}")
    return device
