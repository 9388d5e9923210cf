"""The words that explain one step of a trace: help text, panel titles and timeline labels.

One source for the StepExplorer widget and the one-file HTML page (``trace.to_html``), so both say the
same thing. ``{model}`` and ``{output}`` are filled in per family (``widgets.base.words``): "U-Net" and
"noise" for Stable Diffusion, "transformer" and "velocity" for flow models such as SD3.
"""

from __future__ import annotations

STEP_HELP = (
    "Move the <b>step</b> slider (or press ▶) to walk through the denoising loop. At each step the {model} "
    "looks at the noisy {xt} <b>x_t</b> and predicts the {output} twice: with the prompt (<b>ε_c</b>) and "
    "without it (<b>ε_u</b>). Their difference <b>Δ = ε_c − ε_u</b> is what the prompt adds; guidance "
    "pushes along it: <b>ε̂ = ε_u + w·Δ</b>. From ε̂ the model's current guess of the final picture, "
    "<b>x̂0</b>, follows. The timeline shows the sizes (RMS) of these predictions at every step."
)

# key → title of each picture panel (the widget adds CSS classes; the page uses the keys)
STEP_PANELS = {
    "xt": "x_t (noisy {xt} entering the step)",
    "x0": "x̂0 (the model's current guess)",
    "channels": "latent channels of x_t",
    "eps_c": "ε_c ({output} predicted with prompt)",
    "eps_u": "ε_u ({output} predicted without)",
    "delta": "Δ = ε_c − ε_u (red +, blue −)",
    "guided": "ε̂ = ε_u + w·Δ (what is used)",
}

GUIDANCE_OFF = "guidance off (w ≤ 1):\nthe {model} ran once per\nstep, with the prompt only,\nso there is no ε_u and no Δ"

TIMELINE_TITLE = "per-step sizes of the predictions"
# key → legend label of each timeline series (left axis: RMS; right axis: cos and ᾱ_t, 0..1)
TIMELINE_SERIES = {
    "c": "‖ε_c‖ (RMS)",
    "u": "‖ε_u‖ (RMS)",
    "d": "‖Δ‖ (RMS)",
    "cos": "cos(ε_c, ε_u)",
    "abar": "ᾱ_t (signal fraction)",
}
TIMELINE_AXES = {"x": "loop step", "left": "RMS", "right": "cos, ᾱ_t"}
