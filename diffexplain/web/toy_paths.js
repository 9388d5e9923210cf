// ToyPaths in the browser (diffexplain.widgets.ToyPaths): both dialects' 2-D sample paths as SVG plots,
// one step slider for both, redrawn here from the paths sent once per sampling (`_view.plots`); the step
// reaches Python once scrubbing settles (TOY_SYNC_MS). The colour, the steps and w sample again: messages
// to Python. Bundled after trace_view.js (diffexplain.web.bundle): el, addStyle, NS, fmt are in scope.

const TOY_SYNC_MS = 250;

function mountToyPaths(root, D, model) {
  const timers = [];
  const help = el("div", { class: "dx-help" });
  help.innerHTML = D.help;
  root.append(help);

  // ---- what Python samples with ----
  const row = el("div", { class: "dx-controls" });
  const colour = el("select", { class: "dx-toy-colour", "aria-label": "colour" });
  for (const c of D.colours) colour.append(el("option", { value: c }, c));
  colour.value = D.colour;
  const range = (cls, label, attrs, value) => {
    const box = el("label", { class: cls }, label + " ");
    const input = el("input", { type: "range", ...attrs, value: String(value), "aria-label": label });
    const out = el("output", { class: "widget-readout" }, String(value));
    input.addEventListener("input", () => { out.textContent = input.value; });
    input.addEventListener("keydown", (ev) => ev.stopPropagation());
    box.append(input, out);
    return [box, input];
  };
  const [stepsBox, steps] = range("dx-toy-steps", "steps", { min: "1", max: "50", step: "1" }, D.num_steps);
  const [wBox, w] = range("dx-toy-guidance", "w", { min: "0", max: "6", step: "0.5" }, D.guidance);
  const resample = () => model.send({ action: "settings", colour: colour.value, num_steps: Number(steps.value),
                                      guidance: Number(w.value) });
  for (const input of [colour, steps, w]) input.addEventListener("change", resample);
  const colourBox = el("label", {}, "colour ");
  colourBox.append(colour);
  row.append(colourBox, stepsBox, wBox);
  const [showBox, slider] = range("dx-toy-step dx-step-slider", "show step", { min: "0", max: String(D.num_steps), step: "1" },
                                  model.get("shown_step"));
  const caption = el("span", { class: "dx-toy-caption" });
  const row2 = el("div", { class: "dx-controls" });
  row2.append(showBox, caption);
  root.append(row, row2);

  // ---- the two plots ----
  const plotsRow = el("div", { class: "dx-row" });
  const plots = {};
  const SIZE = 430, M = 30;
  for (const [objective, P] of Object.entries(D.plots)) {
    const box = el("div", { class: "dx-panel dx-toy-" + objective });
    box.append(el("b", {}, P.title));
    const svg = document.createElementNS(NS, "svg");
    for (const [k, v] of Object.entries({ width: SIZE, height: SIZE, viewBox: `0 0 ${SIZE} ${SIZE}`, role: "img",
                                          class: "dx-toy-plot" })) svg.setAttribute(k, v);
    box.append(svg);
    plotsRow.append(box);
    const [lo, hi] = P.range;
    const sx = (x) => M + ((x - lo) / (hi - lo)) * (SIZE - 2 * M);
    const sy = (y) => SIZE - M - ((y - lo) / (hi - lo)) * (SIZE - 2 * M);
    const node = (tag, attrs, text, parent) => {
      const e = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      if (text !== undefined) e.textContent = text;
      (parent || svg).append(e);
      return e;
    };
    node("rect", { x: M, y: M, width: SIZE - 2 * M, height: SIZE - 2 * M, fill: "#f3f5fa" });
    const tick = hi - lo > 24 ? 5 : hi - lo > 10 ? 2 : 1; // a grid line per unit, fewer when guidance overshoots
    for (let v = Math.ceil(lo / tick) * tick; v <= hi; v += tick) {
      node("line", { x1: sx(v), x2: sx(v), y1: M, y2: SIZE - M, stroke: "#fff" });
      node("line", { x1: M, x2: SIZE - M, y1: sy(v), y2: sy(v), stroke: "#fff" });
      node("text", { x: sx(v), y: SIZE - M + 14, "text-anchor": "middle" }, String(v));
      node("text", { x: M - 4, y: sy(v) + 4, "text-anchor": "end" }, String(v));
    }
    D.centres.forEach(([x, y], i) => {
      node("circle", { cx: sx(x), cy: sy(y), r: 9, fill: D.hues[D.colours[i]], opacity: 0.35 });
      node("text", { x: sx(x), y: sy(y) - 12, "text-anchor": "middle" }, D.colours[i]);
    });
    const layer = node("g", { class: "dx-toy-points" });
    plots[objective] = { P, sx, sy, layer, node };
  }
  const summary = el("div", { class: "dx-toy-summary dx-info" });
  summary.innerHTML = D.summary;
  root.append(plotsRow, summary);

  let current = -1, syncTimer = null;
  function setStep(k, quiet) {
    k = Math.max(0, Math.min(D.num_steps, k | 0));
    slider.value = String(k);
    slider.nextSibling.textContent = String(k);
    if (k === current) return;
    current = k;
    for (const { P, sx, sy, layer, node } of Object.values(plots)) {
      layer.replaceChildren();
      const n = P.path[0].length;
      for (let j = 0; j < n; j++) { // each sample's path up to step k
        let d = "";
        for (let s = 0; s <= k; s++) d += (s ? " L" : "M") + sx(P.path[s][j][0]).toFixed(1) + "," + sy(P.path[s][j][1]).toFixed(1);
        node("path", { d, fill: "none", stroke: "#888", "stroke-width": 1, class: "dx-toy-path" }, undefined, layer);
      }
      for (const [x, y] of P.path[k]) node("circle", { cx: sx(x), cy: sy(y), r: 3, fill: "#222", class: "dx-toy-xt" }, undefined, layer);
      if (k > 0) for (const [x, y] of P.x0[k - 1]) {
        node("circle", { cx: sx(x), cy: sy(y), r: 4, fill: "none", stroke: D.hues[D.colour], "stroke-width": 1.5,
                         class: "dx-toy-x0" }, undefined, layer);
      }
      layer.setAttribute("data-step", String(k));
    }
    caption.textContent = "step " + k + " of " + D.num_steps;
    if (!quiet) {
      clearTimeout(syncTimer);
      syncTimer = setTimeout(() => { model.set("shown_step", k); model.save_changes(); }, TOY_SYNC_MS);
      timers.push(syncTimer);
    }
  }
  slider.addEventListener("input", () => setStep(Number(slider.value)));
  setStep(model.get("shown_step"), true);
  return {
    setStep: (k) => setStep(k, true),
    step: () => current,
    destroy() { timers.forEach(clearTimeout); root.replaceChildren(); },
  };
}

function renderToyPaths({ model, el: host }) {
  const root = document.createElement("div");
  root.classList.add("dx-widget", "dx-view", "dx-toy-paths");
  host.append(root);
  addStyle(root); // once attached (a shadow root in marimo)
  const body = document.createElement("div");
  const status = el("div", { class: "dx-status" });
  const errors = el("div", { class: "dx-errors dx-output" });
  root.append(body, status, errors);
  let view = null;
  function drawStatus() {
    status.innerHTML = model.get("status_html") || "";
    errors.textContent = model.get("error_text") || "";
    errors.hidden = !errors.textContent;
  }
  function rebuild() {
    if (view) view.destroy();
    view = null;
    body.replaceChildren();
    const D = model.get("_view");
    if (D && D.plots) view = mountToyPaths(body, D, model);
  }
  const onStep = () => { if (view && view.step() !== model.get("shown_step")) view.setStep(model.get("shown_step")); };
  model.on("change:_version", rebuild);
  model.on("change:shown_step", onStep);
  model.on("change:status_html", drawStatus);
  model.on("change:error_text", drawStatus);
  drawStatus();
  rebuild();
  return () => {
    model.off("change:_version", rebuild);
    model.off("change:shown_step", onStep);
    model.off("change:status_html", drawStatus);
    model.off("change:error_text", drawStatus);
    if (view) view.destroy();
  };
}

export default { render: renderToyPaths };
