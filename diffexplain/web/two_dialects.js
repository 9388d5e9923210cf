// TwoDialects in the browser (diffexplain.widgets.TwoDialects): the ε model's and the flow model's rows
// under one step slider, their x̂0 strips and the settle plot. Every step's pictures of both rows come
// ONCE per run in `_frames` ("<dialect>/<k>/<panel>", "<dialect>/final", "<dialect>/strip"); the slider
// then swaps pictures, labels and the plot's marks here, and tells Python the step once it settles
// (`shown_step`). "Run both" and the preview box are messages to Python.

const DIALECT_CSS = `
.dx-dialects-view .dx-dialect-rows { display: flex; flex-wrap: wrap; gap: 10px 28px; }
.dx-dialects-view .dx-dialect-label { font-size: 0.9em; margin: 2px 0 6px; }
.dx-dialects-view .dx-input input { width: 7em; }
.dx-dialects-view .dx-input.dx-prompt input { width: 30em; }
.dx-dialects-view .dx-strip { image-rendering: auto; }
`;

function renderTwoDialects({ model, el: host }) {
  const root = el("div", { class: "dx-widget dx-view dx-dialects-view" });
  const style = el("style", {}, DIALECT_CSS);
  root.setAttribute("data-lm-suppress-shortcuts", "true");
  host.append(style, root);
  addStyle(root); // once attached (a shadow root in marimo)
  const body = el("div");
  root.append(body);
  const shell = actionShell(model, root);
  let pics = null, syncTimer = null, setStep = () => {};

  function rebuild() {
    if (pics) pics.revoke();
    pics = warmUrls(model);
    const D = model.get("_view") || {};
    const I = D.inputs || {};
    const S = D.display_size || 128;
    const n = D.n || 0;
    const help = el("div", { class: "dx-help" });
    help.innerHTML = D.help || "";
    const [promptBox, prompt] = inputBox("prompt", "dx-prompt", I.prompt);
    const [seedBox, seed] = inputBox("seed", "dx-seed", I.seed);
    const [stepsBox, steps] = inputBox("steps", "dx-steps", I.steps, { inputmode: "numeric" });
    const [wBox, w] = inputBox("w", "dx-guidance-scale", I.w, { inputmode: "decimal" });
    const run = el("button", { type: "button", class: "dx-run dx-action" }, "Run both");
    run.disabled = !!model.get("busy");
    run.addEventListener("click", () => model.send({
      action: "run", prompt: prompt.value, seed: seed.value, steps: steps.value, w: w.value,
    }));
    const previewLabel = el("label", { class: "dx-preview-toggle" });
    const preview = el("input", { type: "checkbox" });
    preview.checked = !!I.preview; preview.disabled = !!I.preview_disabled;
    preview.addEventListener("change", () => model.send({ action: "preview", value: preview.checked }));
    previewLabel.append(preview, " fast latent preview (no VAE)");
    const row1 = el("div", { class: "dx-controls" }), row2 = el("div", { class: "dx-controls" });
    row1.append(promptBox, seedBox);
    row2.append(stepsBox, wBox, run, previewLabel);

    const slider = stepSlider("step", "dx-dialect-step", n - 1, Math.min(model.get("shown_step"), Math.max(n - 1, 0)), (k) => {
      show(k);
      clearTimeout(syncTimer); // Python hears of the step once scrubbing settles
      syncTimer = setTimeout(() => { model.set("shown_step", k); model.save_changes(); }, STEP_SYNC_MS);
    });
    slider.box.hidden = n === 0;
    const rowsBox = el("div", { class: "dx-dialect-rows" });
    const rows = (D.rows || []).map((R) => {
      const box = el("div", { class: "dx-dialect-row dx-" + R.key + "-row" });
      const title = el("b", {}, R.title);
      title.style.color = R.colour;
      const line = el("div", { class: "dx-row" });
      const panels = {};
      for (const key of Object.keys(R.panels)) {
        panels[key] = picturePanel(R.panels[key], R.css[key], S);
        line.append(panels[key].box);
      }
      const label = el("div", { class: "dx-dialect-label dx-" + R.key + "-label" });
      const strip = el("img", { class: "dx-strip dx-" + R.key + "-strip", alt: "x̂0 as the loop goes" });
      const stripSrc = pics.urls[R.key + "/strip"];
      if (stripSrc) strip.src = stripSrc; else strip.hidden = true;
      box.append(title, line, label, strip);
      rowsBox.append(box);
      panels.final.show(pics.urls[R.key + "/final"]);
      return { R, panels, label };
    });
    const plotBox = el("div", { class: "dx-dialect-plot" });
    const P = D.plot || {};
    const plot = n ? linePlot(plotBox, {
      title: P.title, x: P.x, y: P.y, width: 620, height: 280,
      series: rows.map(({ R }) => ({ name: R.title, colour: R.colour, xs: R.curve.map((_, i) => i), ys: R.curve })),
    }) : null;
    plotBox.hidden = !plot;

    function show(k) {
      k = Math.max(0, Math.min(n - 1, k | 0));
      slider.set(k);
      for (const { R, panels, label } of rows) {
        for (const key of ["latents", "output", "pred_x0"]) {
          panels[key].show(pics.urls[R.key + "/" + k + "/" + key]);
          panels[key].img.dataset.step = String(k);
        }
        label.textContent = R.labels[k] || "";
      }
      if (plot) plot.marks(rows.map(({ R }) => [k, R.curve[k], "#000"]));
    }
    setStep = (k) => { if (n) show(k); };
    body.replaceChildren(help, row1, row2, slider.box, rowsBox, plotBox);
    setStep(model.get("shown_step"));
    shell.draw();
  }
  const onStep = () => setStep(model.get("shown_step"));
  model.on("change:_version", rebuild);
  model.on("change:shown_step", onStep);
  rebuild();
  return () => {
    clearTimeout(syncTimer);
    model.off("change:_version", rebuild);
    model.off("change:shown_step", onStep);
    shell.destroy();
    if (pics) pics.revoke();
  };
}

export default { render: renderTwoDialects };
