"""The quickstart as a marimo app: prompt → trace → StepExplorer, and a w slider that re-guides from the cache.

Run it live with ``marimo run notebooks/quickstart_marimo.py`` (or edit it with ``marimo edit``); a
static page with ``marimo export html notebooks/quickstart_marimo.py -o quickstart.html``. The tests run
it as plain Python (``tests/test_marimo_notebook.py``) and open its exported page and live app in
headless Chromium (``tests/browser/test_marimo_browser.py``).
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell
def _():
    import base64

    import marimo as mo

    from diffexplain import load_default, probe, render
    from diffexplain.widgets import StepExplorer

    return StepExplorer, base64, load_default, mo, probe, render


@app.cell
def _(mo):
    mo.md(r"""
    # diffexplain in marimo: look inside a diffusion model

    A **tiny embedded model** (the architecture of Stable Diffusion, trained on 64×64 pictures of
    coloured shapes) runs on a laptop CPU in seconds. It knows only these words: *red orange yellow
    green blue purple* · *circle square triangle* · *left right top bottom centre* · *small large* ·
    *light / dark background*.

    Type a prompt: the cells below run again by themselves (marimo is reactive). The trace keeps
    every step's noise estimates ε_c (with the prompt) and ε_u (without), so the **w** slider
    re-guides x̂0 = the model's guess of the picture from that cache, with **no model call**.
    """)
    return


@app.cell
def _(load_default):
    explainer = load_default(progress=False)  # offline, a few seconds
    STEPS = 12  # few steps: quick on a CPU
    W_RUN = 7.5  # the guidance scale of the run itself
    return STEPS, W_RUN, explainer


@app.cell
def _(mo):
    prompt = mo.ui.text(value="a red circle on the left", label="prompt", full_width=True)
    prompt  # noqa: B018 - marimo shows the last expression of a cell
    return (prompt,)


@app.cell
def _(STEPS, W_RUN, explainer, prompt):
    trace = explainer.run(prompt.value, seed=0, num_inference_steps=STEPS, guidance_scale=W_RUN)
    return (trace,)


@app.cell
def _(mo):
    mo.md(r"""
    ## StepExplorer

    Slide through the steps, press play, or click the widget and use the arrow keys: x_t, x̂0, the
    noise estimates ε_c, ε_u, Δ = ε_c − ε_u and ε̂ = ε_u + w·Δ, the latent channels and a timeline.
    The pictures are in the browser: scrubbing needs no Python.
    """)
    return


@app.cell
def _(StepExplorer, mo, trace):
    explorer = mo.ui.anywidget(StepExplorer(trace))
    explorer  # noqa: B018 - marimo shows the last expression of a cell
    return (explorer,)


@app.cell
def _(W_RUN, mo):
    w = mo.ui.slider(0.0, 15.0, step=0.5, value=W_RUN, label="w (re-guide)", show_value=True)
    mo.md(
        f"""
        ## Re-guiding from the cache

        Move **w**: x̂0 at the StepExplorer's step is re-computed from the cached ε_c and ε_u as
        ε_u + w·Δ (`trace.reguide(step, w)`), with no model call. The run itself used w = {W_RUN}.

        {w}
        """
    )
    return (w,)


@app.cell
def reguide_at_w(base64, explainer, explorer, mo, probe, render, trace, w):
    def _png_html(image, css: str, caption: str) -> str:
        data = base64.b64encode(render.png_bytes(image)).decode()
        return (
            f'<figure style="margin:0 12px 0 0"><img class="{css}" src="data:image/png;base64,{data}"'
            f' alt="{caption}" style="image-rendering:pixelated"><figcaption>{caption}</figcaption></figure>'
        )

    def _x0_picture(latents):
        return render.to_pil(probe.decode_latents(explainer, latents), size=160)

    step = max(0, min(explorer.value["step"], len(trace) - 1))  # the step shown above: re-runs as it moves
    reguided = trace.reguide(step, w.value)  # ε̂ and x̂0 at w, from the cache: no model call
    mo.Html(
        f'<div class="dx-reguide" data-step="{step}" data-w="{w.value:g}" style="display:flex">'
        + _png_html(_x0_picture(trace["step.pred_x0", step]), "dx-run-x0", f"x̂0 at step {step}, run's w")
        + _png_html(_x0_picture(reguided.pred_x0), "dx-reguided-x0", f"x̂0 at step {step}, w = {w.value:g}")
        + "</div>"
    )
    return


@app.cell
def _(mo):
    mo.md(r"""
    ## Exercises

    1. Set w to 1 (ε̂ = ε_c: the prompt alone, no push) and to 0 (ε̂ = ε_u: no prompt at all). Which
       steps change most?
    2. Scrub to step 0 and move w: why does x̂0 change so much more there than at the last step?
    """)
    return


if __name__ == "__main__":
    app.run()
