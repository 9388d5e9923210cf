"""The procedural captioned dataset the default model is trained on."""

from diffexplain.data.dataset import Example, ShapesDataset, held_out
from diffexplain.data.render import render_scene
from diffexplain.data.scenes import Scene, SceneObject, caption, sample_scene

__all__ = [
    "Example",
    "Scene",
    "SceneObject",
    "ShapesDataset",
    "caption",
    "held_out",
    "render_scene",
    "sample_scene",
]
