// ForwardProcess in the browser (after trace_view.js and lab_view.js, see diffexplain.widgets.lab_view):
// x0 and the noise ε come once as float32 arrays (`_arrays`), each schedule's ᾱ_t and β_t once
// (`_schedules`), so x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, the curves, the t marker and the info line are drawn
// here for every t and schedule with no kernel. The model's side (x_t in its latents, its guess x̂0)
// comes from Python once the t slider settles, or on "Ask the model again".
function forwardArrays(model, shape) {
  const raw = model.get("_arrays");
  const n = shape[0] * shape[1] * shape[2];
  if (!raw || !n) return null;
  const view = raw instanceof DataView ? raw : new DataView(raw.buffer || raw);
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength).slice(); // aligned copy
  const all = new Float32Array(bytes.buffer);
  return { x0: all.subarray(0, n), eps: all.subarray(n, 2 * n) };
}

function buildForwardProcess(lab) {
  const D = lab.data();
  if (!D.help) return [];
  const S = D.size || 128, shape = D.shape || [3, 0, 0], [, h, w] = shape;
  const arrays = forwardArrays(lab.model, shape);
  const schedules = lab.model.get("_schedules") || [];
  const byName = Object.fromEntries(schedules.map((s) => [s.name, s]));
  const canvas = el("canvas", { width: String(w), height: String(h) });
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(w, h);
  const x0 = lab.picture("x0 (clean picture)", "dx-clean-image", S);
  const xt = lab.picture("x_t (forward: noised to t)", "dx-forward-image", S);
  xt.img.style.imageRendering = "pixelated";
  const mxt = lab.picture("x_t in the model's latents", "dx-model-xt-image", S);
  const mx0 = lab.picture("the model's guess x̂0", "dx-model-x0-image", S);
  const pictures = el("div", { class: "dx-row" });
  pictures.append(x0.box, xt.box, ...(D.model ? [mxt.box, mx0.box] : []));
  const info = el("div", { class: "dx-info dx-forward-info" });
  const charts = el("div", { class: "dx-row dx-schedule-plot" });
  let drawn = null, marks = [];
  const T = (s) => s.abar.length - 1;

  function drawCharts(s) {
    const ts = s.abar.map((_, i) => i);
    const abar = lineChart([
      { name: "ᾱ_t (signal fraction)", x: ts, y: s.abar, color: "#636efa" },
      ...(D.model_abar ? [{ name: "the model's own ᾱ_t", x: D.model_abar.map((_, i) => i), y: D.model_abar,
                             color: "#00cc96", dash: "2,3" }] : []),
    ], { title: "ᾱ_t", xLabel: "t", intX: true, width: 330, height: 220, css: "dx-abar-plot" });
    const beta = lineChart([{ name: "β_t (noise per step)", x: ts, y: s.beta, color: "#ef553b" }],
                           { title: "β_t", xLabel: "t", intX: true, width: 330, height: 220, css: "dx-beta-plot" });
    const snr = s.abar.map((a) => a / Math.max(1 - a, 1e-12));
    const snrChart = lineChart([{ name: "SNR_t = ᾱ_t/(1−ᾱ_t)", x: ts, y: snr, color: "#ab63fa" }],
                               { title: "SNR_t (log scale)", xLabel: "t", intX: true, log: true, width: 330,
                                 height: 220, css: "dx-snr-plot" });
    charts.replaceChildren(abar.node, beta.node, snrChart.node);
    marks = [(t) => abar.mark(t, s.abar[t]), (t) => beta.mark(t, s.beta[t]), (t) => snrChart.mark(t, snr[t])];
  }
  function drawXt(s, t) { // x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, clamped to [-1, 1], as bytes (render.to_pil's rounding)
    if (!arrays) return;
    const a = Math.sqrt(s.abar[t]), b = Math.sqrt(1 - s.abar[t]), n = w * h;
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < 3; c++) {
        const v = Math.max(-1, Math.min(1, a * arrays.x0[c * n + i] + b * arrays.eps[c * n + i]));
        pixels.data[4 * i + c] = Math.round((v + 1) * 127.5);
      }
      pixels.data[4 * i + 3] = 255;
    }
    ctx.putImageData(pixels, 0, 0);
    xt.img.src = canvas.toDataURL();
    xt.img.hidden = false;
    xt.img.dataset.t = String(t);
  }
  lab.onChange(() => {
    const s = byName[lab.get("schedule")] || schedules[0];
    if (!s) return;
    const t = Math.max(0, Math.min(T(s), lab.get("t") | 0));
    if (drawn !== s.name) { drawCharts(s); drawn = s.name; }
    marks.forEach((m) => m(t));
    drawXt(s, t);
    lab.show(x0.img, "x0"); lab.show(mxt.img, "model_xt"); lab.show(mx0.img, "model_x0");
    const modelT = lab.data().model_t; // (the view kept, its data new: read it now)
    if (modelT !== null && modelT !== undefined) mx0.title.textContent = "the model's guess x̂0 (t = " + modelT + ")";
    const abar = s.abar[t], snr = abar / Math.max(1 - abar, 1e-12);
    info.textContent = "t = " + t + ": ᾱ_t = " + abar.toFixed(4) + " (√ᾱ_t = " + Math.sqrt(abar).toFixed(3) +
      " of the picture is left), noise std √(1−ᾱ_t) = " + Math.sqrt(1 - abar).toFixed(3) + ", SNR = " +
      Number(snr.toPrecision(4));
  });
  const options = schedules.map((s) => [s.label, s.name]);
  return [
    lab.help(D.help),
    lab.row(lab.select("schedule", "schedule", options, { css: "dx-schedule" }),
            lab.range("t", "t", { min: 0, max: schedules.length ? T(schedules[0]) : 999, css: "dx-t-slider" }),
            lab.text("seed", "noise seed", { css: "dx-seed", width: "90px" })),
    lab.row(lab.number("dataset_index", "dataset #", { min: 0, max: 99999, css: "dx-dataset-index" }),
            lab.upload("image", "dx-image-upload")),
    D.model ? lab.row(lab.text("prompt", "prompt", { css: "dx-prompt", width: "420px" }),
                      lab.number("guidance", "w", { min: 0, max: 30, step: 0.5, float: true }),
                      lab.button("Ask the model again", "dx-ask-button", "ask")) : null,
    pictures, info, charts,
  ].filter(Boolean);
}

function renderForwardProcess({ model, el: host }) {
  return mountLab(model, host, "dx-forward-process", buildForwardProcess, (D) => D.arrays);
}

export default { render: renderForwardProcess };
