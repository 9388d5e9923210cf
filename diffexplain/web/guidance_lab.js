// GuidanceLab in the browser (bundled after trace_view.js: el, addStyle, g, fmt, NS, blobUrls in scope).
// Traits (diffexplain.widgets.guidance_lab.GuidanceLab): _view (the lab's data), _frames/_index (the finals
// "off", "on", "diff", "range" and every step's x̂0 "k/off", "k/on", "k/range": sent once per run);
// _strip/_reguide (the re-guided strip, from Python: trace.reguide); _grid/_grid_frames/_grid_index (the
// seed grid); step; status_html, error_text, busy, progress_*. The step slider, the arrow keys, a click on
// a strip or a plot move through the steps HERE, with no kernel round trip; the step reaches Python once
// scrubbing settles. What needs the model is a message {action: ...} to Python.

const LAB_CSS = `
.dx-lab .dx-lab-strip { display: flex; gap: 2px; flex-wrap: wrap; align-items: center; margin: 2px 0; }
.dx-lab .dx-lab-strip img { width: 44px; height: 44px; cursor: pointer; border: 2px solid transparent;
                            image-rendering: pixelated; background: #eee; }
.dx-lab .dx-lab-strip img.dx-on { border-color: #d33; }
.dx-lab .dx-lab-strip span { font-size: 0.8em; width: 110px; color: #444; }
.dx-lab .dx-grid-columns { display: flex; flex-wrap: wrap; gap: 4px 16px; }
.dx-lab .dx-grid-column { display: flex; flex-direction: column; align-items: center; }
.dx-lab .dx-grid-cells { display: grid; grid-template-columns: repeat(4, 72px); }
.dx-lab .dx-grid-image { width: 64px; height: 64px; margin: 1px; border: 3px solid transparent; background: #ebebeb; }
.dx-lab .dx-grid-image.dx-right { border-color: #1a9850; }
.dx-lab .dx-grid-image.dx-wrong { border-color: #d73027; }
.dx-lab input[type=number] { width: 70px; }
.dx-lab input.dx-prompt { width: 420px; }
.dx-lab .dx-busy-only { visibility: hidden; }
.dx-lab.dx-busy .dx-busy-only { visibility: visible; }
.dx-lab h3 { font-size: 1em; margin: 16px 0 4px; }
`;
const SERIES_COLORS = ["#636efa", "#ef553b", "#00cc96", "#ab63fa"];

function addLabStyle(root) {
  addStyle(root);
  addCss(root, "dx-guidance-lab-style", LAB_CSS);
}

function urlsOf(frames, index) {
  const urls = {};
  if (!frames) return urls;
  const view = frames instanceof DataView ? frames : new DataView(frames.buffer || frames);
  for (const [key, [offset, length]] of Object.entries(index || {})) {
    urls[key] = URL.createObjectURL(new Blob([new Uint8Array(view.buffer, view.byteOffset + offset, length)], { type: "image/png" }));
  }
  return urls;
}

// A small line plot: series [{name, y: [..]}] against x = 0..n-1 (or xs), a step cursor; onPick(i) on click.
function linePlot(cls, title, series, { xs = null, xlabel = "loop step", onPick = null } = {}) {
  const box = el("div", { class: cls + " dx-figure" });
  const W = 620, H = 200, M = { l: 50, r: 16, t: 8, b: 32 };
  const n = Math.max(0, ...series.map((s) => (s.y || []).length));
  const X = xs || [...Array(n).keys()];
  const values = series.flatMap((s) => s.y || []).filter((v) => v !== null && v !== undefined && isFinite(v));
  const lo = Math.min(0, ...values), hi = Math.max(1e-6, ...values) * 1.1;
  const x0 = Math.min(...X, 0), x1 = Math.max(...X, 1);
  const px = (x) => M.l + ((x - x0) * (W - M.l - M.r)) / Math.max(x1 - x0, 1e-9);
  const py = (v) => M.t + (H - M.t - M.b) * (1 - (v - lo) / Math.max(hi - lo, 1e-9));
  const svg = document.createElementNS(NS, "svg");
  for (const [k, v] of Object.entries({ width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" })) svg.setAttribute(k, v);
  svg.style.cssText = "max-width:100%;height:auto" + (onPick ? ";cursor:pointer" : "");
  const node = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  node("rect", { x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b, fill: "#f3f5fa" });
  for (const v of [lo, (lo + hi) / 2, hi]) node("text", { x: M.l - 6, y: py(v) + 4, "text-anchor": "end" }, g(v.toPrecision(3)));
  const every = Math.max(1, Math.ceil(X.length / 12));
  X.forEach((x, i) => { if (i % every === 0) node("text", { x: px(x), y: H - M.b + 14, "text-anchor": "middle" }, g(x)); });
  node("text", { x: (M.l + W - M.r) / 2, y: H - 4, "text-anchor": "middle" }, xlabel);
  const legend = el("div", { class: "dx-legend" });
  series.forEach((s, j) => {
    const ys = s.y || [];
    if (!ys.some((v) => v !== null && v !== undefined)) return;
    let d = "";
    ys.forEach((v, i) => { if (v !== null && v !== undefined) d += (d ? " L" : "M") + px(X[i]).toFixed(1) + "," + py(v).toFixed(1); });
    node("path", { d, fill: "none", stroke: SERIES_COLORS[j % 4], "stroke-width": 2, class: "dx-series", "data-series": s.name });
    ys.forEach((v, i) => { if (v !== null && v !== undefined) node("circle", { cx: px(X[i]), cy: py(v), r: 2.5, fill: SERIES_COLORS[j % 4] }); });
    const item = el("span"), sw = el("i");
    sw.style.borderTopColor = SERIES_COLORS[j % 4];
    item.append(sw, s.name);
    legend.append(item);
  });
  const cursor = node("line", { y1: M.t, y2: H - M.b, stroke: "#888", "stroke-width": 1, class: "dx-cursor" });
  if (onPick) svg.addEventListener("click", (ev) => {
    const r = svg.getBoundingClientRect(), x = ((ev.clientX - r.left) * W) / r.width;
    let best = 0;
    X.forEach((xi, i) => { if (Math.abs(px(xi) - x) < Math.abs(px(X[best]) - x)) best = i; });
    onPick(best);
  });
  const head = el("div", { class: "dx-plot-title" }, title);
  head.style.cssText = "font-size:0.9em;margin:8px 0 2px 50px";
  box.append(head, svg, legend);
  return { box, mark(i) { const x = n ? px(X[Math.min(i, n - 1)]) : -10; cursor.setAttribute("x1", x); cursor.setAttribute("x2", x); } };
}

function panel(title, cls, size) {
  const box = el("div", { class: "dx-panel" });
  const head = el("b", { class: "dx-panel-title" });
  head.innerHTML = title;
  const img = el("img", { class: cls, width: String(size), alt: head.textContent });
  const empty = el("div", { class: "dx-empty" });
  empty.style.width = size + "px"; empty.style.height = size + "px"; empty.hidden = true;
  box.append(head, img, empty);
  return { box, head, show(src, why) {
    if (src) { if (img.getAttribute("src") !== src) img.src = src; img.hidden = false; empty.hidden = true; }
    else { img.hidden = true; empty.hidden = false; empty.textContent = why || ""; }
  }, img };
}

function renderGuidanceLab({ model, el: host }) {
  const root = el("div", { class: "dx-widget dx-view dx-lab", tabindex: "0", "data-lm-suppress-shortcuts": "true" });
  host.append(root);
  addLabStyle(root); // once attached (a shadow root in marimo)
  const body = el("div"), reguideBox = el("div"), gridBox = el("div", { class: "dx-seed-grid" });
  const status = el("div", { class: "dx-status" });
  const errors = el("div", { class: "dx-errors dx-output" });
  const stop = el("button", { type: "button", class: "dx-stop", title: "stop after the current step" }, "■ Stop");
  const progress = el("progress", { class: "dx-progress", max: "1", value: "0" });
  stop.addEventListener("click", () => model.send({ action: "stop" }));
  const busyRow = el("div", { class: "dx-controls" });
  busyRow.append(progress, stop);
  root.append(body, status, busyRow, errors);
  let urls = {}, gridUrls = {}, stripUrl = null, current = 0, syncTimer = null, warm = [];
  let buttons = [], scrub = null, boxes = null, deltaPlot = null;

  const busy = () => !!model.get("busy");
  function drawStatus() {
    status.innerHTML = model.get("status_html") || "";
    errors.textContent = model.get("error_text") || "";
    errors.hidden = !errors.textContent;
    stop.disabled = !busy();
    progress.max = Math.max(1, model.get("progress_max") || 1);
    progress.value = model.get("progress_value") || 0;
    root.classList.toggle("dx-busy", busy());
    for (const b of buttons) b.disabled = busy() || b.dataset.off === "1";
  }
  const button = (text, cls, fn) => {
    const b = el("button", { type: "button", class: cls }, text);
    b.addEventListener("click", fn);
    buttons.push(b);
    return b;
  };
  const send = (msg) => model.send({ ...msg, ...(boxes ? boxes() : {}) });

  function rebuild() {
    Object.values(urls).forEach((u) => URL.revokeObjectURL(u));
    const D = model.get("_view") || {};
    urls = urlsOf(model.get("_frames"), model.get("_index"));
    warm = Object.values(urls).map((u) => { const im = new Image(); im.src = u; im.decode().catch(() => {}); return im; });
    buttons = [];
    body.replaceChildren();
    if (!D.titles) return;
    const S = D.size || 160, n = D.n || 0;
    const help = el("div", { class: "dx-help" });
    help.innerHTML = D.help;
    // ---- what the run takes: prompt, seed, steps ----
    const prompt = el("input", { type: "text", class: "dx-prompt", "aria-label": "prompt" });
    prompt.value = D.prompt;
    const seed = el("input", { type: "text", class: "dx-seed", "aria-label": "seed", size: "8" });
    seed.value = D.seed;
    const steps = el("input", { type: "number", class: "dx-steps", min: "1", max: "1000", "aria-label": "steps" });
    steps.value = D.steps;
    for (const box of [prompt, seed, steps]) box.addEventListener("keydown", (ev) => ev.stopPropagation());
    boxes = () => ({ prompt: prompt.value, seed: seed.value, steps: Number(steps.value) });
    const row1 = el("div", { class: "dx-controls" });
    row1.append(el("label", {}, "prompt "), prompt, el("label", {}, "seed "), seed, el("label", {}, "steps "), steps,
                button("Run guidance off and on", "dx-run", () => send({ action: "run" })));
    // ---- the finals ----
    const finals = el("div", { class: "dx-row dx-finals" });
    const why = { range: "press “Guidance off\nfor these steps”" };
    for (const key of ["off", "on", "diff", "range"]) {
      const p = panel(D.titles[key], "dx-" + key + "-image", S);
      p.show(urls[key], why[key]);
      finals.append(p.box);
    }
    const caption = el("div", { class: "dx-caption" });
    caption.innerHTML = D.caption || "";
    // ---- method, w, run at this scale, preview, stages ----
    const row2 = el("div", { class: "dx-controls" });
    if (D.stages && D.stages.length > 1) {
      const group = el("div", { class: "dx-stage-chooser", role: "group" });
      for (const name of D.stages) {
        const b = button("stage " + name, "dx-stage" + (name === D.stage ? " dx-on" : ""), () => model.send({ action: "stage", name }));
        if (name === D.stage) b.dataset.off = "1";
        group.append(b);
      }
      row2.append(group);
    }
    const method = el("select", { "aria-label": "method" });
    for (const label of D.methods) method.append(Object.assign(el("option", { value: label }, label), { selected: label === D.method }));
    method.addEventListener("change", () => model.send({ action: "method", label: method.value }));
    const methodBox = el("label", { class: "dx-guidance-method" }, "method ");
    methodBox.append(method);
    const wBox = el("label", { class: "dx-guidance-slider" }, "w ");
    const w = el("input", { type: "range", min: String(D.scale.min), max: String(D.scale.max), step: String(D.scale.step), "aria-label": "w" });
    w.value = String(D.w);
    const wOut = el("output", { class: "widget-readout" }, g(D.w));
    w.addEventListener("input", () => { wOut.textContent = g(w.value); });
    w.addEventListener("change", () => model.send({ action: "scale", w: Number(w.value) })); // re-guiding needs Python
    w.addEventListener("keydown", (ev) => ev.stopPropagation());
    wBox.append(w, wOut);
    row2.append(methodBox, wBox, button("Run at this scale", "dx-run-scale", () => send({ action: "run_scale", w: Number(w.value) })));
    if (D.preview.shown) {
      const label = el("label", { class: "dx-preview-toggle" });
      const tick = el("input", { type: "checkbox" });
      tick.checked = !!D.preview.value; tick.disabled = !!D.preview.disabled;
      tick.addEventListener("change", () => model.send({ action: "preview", value: tick.checked }));
      label.append(tick, " fast latent preview (no VAE)");
      row2.append(label);
    }
    // ---- the steps, scrubbed here: x̂0 of each run at step k, the strips, the plots' cursor ----
    const stepRow = el("div", { class: "dx-controls dx-step-slider" });
    const slider = el("input", { type: "range", min: "0", max: String(Math.max(n - 1, 0)), value: "0", step: "1",
                                 class: "dx-step dx-lab-step", "aria-label": "step" });
    const readout = el("output", { class: "dx-step-readout widget-readout" }, "0");
    stepRow.append(el("label", {}, "step "), slider, readout);
    slider.addEventListener("input", () => setStep(Number(slider.value)));
    slider.addEventListener("keydown", (ev) => ev.stopPropagation());
    const stepPanels = {};
    const stepRow2 = el("div", { class: "dx-row dx-step-pictures" });
    const runs = [["off", "x̂0 at this step, guidance off"], ["on", "x̂0 at this step, guidance on"]];
    if (D.ranged) runs.push(["range", "x̂0 at this step, guidance off in the range"]);
    for (const [key, title] of runs) { stepPanels[key] = panel(title, "dx-step-" + key + "-image", S); stepRow2.append(stepPanels[key].box); }
    const info = el("div", { class: "dx-info dx-step-info" });
    const strips = {};
    const stripBox = el("div", { class: "dx-strips" });
    for (const [key] of runs) {
      const row = el("div", { class: "dx-lab-strip dx-strip-" + key });
      row.append(el("span", {}, { off: "guidance off", on: "guidance on", range: "off in the range" }[key]));
      strips[key] = [];
      for (let k = 0; k < n; k++) {
        const img = el("img", { alt: key + " step " + k, title: "step " + k });
        if (urls[k + "/" + key]) img.src = urls[k + "/" + key];
        img.addEventListener("click", () => setStep(k));
        row.append(img); strips[key].push(img);
      }
      stripBox.append(row);
    }
    // ---- guidance off in a step range ----
    const a = el("input", { type: "number", min: "0", max: String(D.range.max), "aria-label": "range start" });
    const b = el("input", { type: "number", min: "0", max: String(D.range.max), "aria-label": "range end" });
    [a.value, b.value] = D.range.value.map(String);
    for (const box of [a, b]) box.addEventListener("keydown", (ev) => ev.stopPropagation());
    const rangeRow = el("div", { class: "dx-controls dx-cfg-range" });
    rangeRow.append(el("label", {}, "guidance off in steps "), a, el("label", {}, "to"), b,
                    button("Guidance off for these steps", "dx-cfg-off-button",
                           () => send({ action: "range_off", a: Number(a.value), b: Number(b.value) })));
    const pick = (i) => setStep(i);
    deltaPlot = linePlot("dx-guidance-plot", D.delta_title, D.delta, { onPick: pick });
    const effective = linePlot("dx-effective-plot", D.effective_title, [{ name: "effective w", y: D.effective }], { onPick: pick });
    reguideBox.replaceChildren();
    body.append(help, row1, finals, caption, row2, reguideBox, el("h3", {}, "every step, scrubbed here"), stepRow,
                stepRow2, info, stripBox, rangeRow, deltaPlot.box, effective.box, gridBox);
    function setStep(k, quiet) {
      k = Math.max(0, Math.min(n - 1, k | 0));
      if (String(k) !== slider.value) slider.value = String(k);
      readout.textContent = k;
      current = k;
      for (const [key, p] of Object.entries(stepPanels)) {
        p.show(urls[k + "/" + key], "x̂0 not kept");
        p.img.dataset.step = String(k);
      }
      for (const row of Object.values(strips)) row.forEach((img, i) => img.classList.toggle("dx-on", i === k));
      const t = D.timesteps[k];
      info.innerHTML = "<b>step " + k + "</b> of " + n + " (0-based) · t = " + (t === undefined ? "–" : g(t)) +
        " · effective w = " + fmt(D.effective[k], 2) + " · ‖Δ‖ = " + fmt((D.delta[0].y || [])[k], 3);
      deltaPlot.mark(k); effective.mark(k);
      if (!quiet) {
        clearTimeout(syncTimer);
        syncTimer = setTimeout(() => { model.set("step", k); model.save_changes(); }, STEP_SYNC_MS);
      }
    }
    scrub = { setStep, n };
    if (n) setStep(Math.min(model.get("step") || 0, n - 1), true);
    drawReguide();
    drawGrid();
    drawStatus();
  }
  root.addEventListener("keydown", (ev) => {
    if (ev.target !== root || !scrub || !scrub.n) return;
    const to = { ArrowRight: current + 1, ArrowUp: current + 1, ArrowLeft: current - 1, ArrowDown: current - 1,
                 Home: 0, End: scrub.n - 1 }[ev.key];
    if (to === undefined) return;
    ev.preventDefault(); ev.stopPropagation();
    scrub.setStep(to);
  });

  function drawReguide() {
    const R = model.get("_reguide") || {};
    if (stripUrl) URL.revokeObjectURL(stripUrl);
    const bytes = model.get("_strip");
    stripUrl = bytes && bytes.byteLength ? URL.createObjectURL(new Blob([bytes], { type: "image/png" })) : null;
    const label = el("div", { class: "dx-reguide-label" });
    label.innerHTML = R.label || "";
    const img = el("img", { class: "dx-reguide-strip", alt: "x̂0 re-guided at each step" });
    if (stripUrl) img.src = stripUrl; else img.hidden = true;
    reguideBox.replaceChildren(label, img);
    const D = model.get("_view") || {};
    const push = (D.delta || []).map((s, j) => (j === 1 ? { ...s, y: R.push || s.y } : s));
    if (deltaPlot && D.delta) {
      const plot = linePlot("dx-guidance-plot", D.delta_title, push, { onPick: (i) => scrub && scrub.setStep(i) });
      plot.mark(current);
      deltaPlot.box.replaceWith(plot.box);
      deltaPlot = plot;
    }
  }

  function drawGrid() {
    const G = model.get("_grid") || {};
    Object.values(gridUrls).forEach((u) => URL.revokeObjectURL(u));
    gridUrls = urlsOf(model.get("_grid_frames"), model.get("_grid_index"));
    gridBox.hidden = !G.shown;
    buttons = buttons.filter((b) => !b.classList.contains("dx-grid-button"));
    if (!G.columns) { gridBox.replaceChildren(); return; }
    const help = el("div", { class: "dx-help" });
    help.innerHTML = G.help;
    const n = el("input", { type: "number", class: "dx-grid-seeds", min: "2", max: "48", "aria-label": "seeds" });
    n.value = String(G.seeds);
    n.addEventListener("keydown", (ev) => ev.stopPropagation());
    const grid = (what) => () => send({ action: "grid", what, seeds: Number(n.value) });
    const row = el("div", { class: "dx-controls" });
    const gb = (text, cls, what) => { const b = button(text, cls + " dx-grid-button", grid(what)); return b; };
    row.append(el("label", {}, "seeds "), n, gb("Count seeds", "dx-grid-run", "count"), gb("Sweep w", "dx-sweep-run", "sweep"),
               gb("Compare methods", "dx-compare-methods", "compare"));
    const note = el("div", { class: "dx-grid-note" });
    note.innerHTML = G.note || "";
    const columns = el("div", { class: "dx-grid-columns" });
    for (const c of G.columns) {
      const col = el("div", { class: "dx-grid-column" });
      const title = el("div", { class: "dx-grid-title" }), count = el("div", { class: "dx-grid-count" });
      title.innerHTML = c.title; count.innerHTML = c.count;
      const cells = el("div", { class: "dx-grid-cells" });
      for (const cell of c.cells) {
        const img = el("img", { class: "dx-grid-image" + (cell.verdict ? " dx-" + cell.verdict : ""), width: "64", height: "64",
                                title: cell.tooltip, alt: cell.tooltip });
        if (gridUrls[cell.key]) img.src = gridUrls[cell.key];
        cells.append(img);
      }
      col.append(title, count, cells);
      columns.append(col);
    }
    const sweepTable = el("div", { class: "dx-sweep-table" });
    sweepTable.innerHTML = G.sweep_table || "";
    const methods = el("div", { class: "dx-methods-table" });
    methods.innerHTML = G.methods_table || "";
    const parts = [help, row, note, columns, sweepTable];
    if (G.sweep && G.sweep.length) {
      parts.push(linePlot("dx-sweep-plot", "the same seeds at every w", G.sweep.map((s) => ({ name: s.name, y: s.y })),
                          { xs: G.sweep.find((s) => s.x.length).x, xlabel: "guidance scale w" }).box);
    }
    parts.push(methods);
    gridBox.replaceChildren(...parts);
    drawStatus();
  }

  const onStep = () => { if (scrub && model.get("step") !== current) scrub.setStep(model.get("step"), true); };
  const STATUS = ["status_html", "error_text", "busy", "progress_value", "progress_max"];
  model.on("change:_version", rebuild);
  model.on("change:_reguide", drawReguide);
  model.on("change:_grid", drawGrid);
  model.on("change:step", onStep);
  for (const name of STATUS) model.on("change:" + name, drawStatus);
  rebuild();
  return () => {
    clearTimeout(syncTimer);
    model.off("change:_version", rebuild);
    model.off("change:_reguide", drawReguide);
    model.off("change:_grid", drawGrid);
    model.off("change:step", onStep);
    for (const name of STATUS) model.off("change:" + name, drawStatus);
    [...Object.values(urls), ...Object.values(gridUrls)].forEach((u) => URL.revokeObjectURL(u));
    if (stripUrl) URL.revokeObjectURL(stripUrl);
    warm = [];
  };
}

export default { render: renderGuidanceLab };
