// Parts of the views with panels of their own (TwoDialects, PictureLab): a small SVG line plot (no plotting
// library), the action shell, inputs, a step slider. Appended after a view's module (its function declarations are hoisted), so the view's
// render() can call linePlot. The shared module's `el` and `NS` are in scope.

/**
 * Draw a line plot into `host`. spec: {title, x, y (axis titles), width, height, series: [{name, colour,
 * xs, ys, dash, markers, lines}]}. Returns {svg, marks(points)}: marks([[x, y, colour], ...]) draws open
 * circles (the step shown) over the series, replacing the previous ones.
 */
function linePlot(host, spec) {
  const W = spec.width || 520, H = spec.height || 260, M = { l: 58, r: 14, t: 28, b: 40 };
  const all = spec.series.flatMap((s) => s.xs.map((x, i) => [x, s.ys[i]])).filter(([, y]) => y !== null && y !== undefined);
  const xsAll = all.map((p) => p[0]), ysAll = all.map((p) => p[1]);
  let x0 = Math.min(...xsAll, 0), x1 = Math.max(...xsAll, 1);
  let y0 = Math.min(...ysAll, 0), y1 = Math.max(...ysAll, 1e-6);
  if (x1 === x0) x1 = x0 + 1;
  const nice = (span) => {
    const p = Math.pow(10, Math.floor(Math.log10(span))), f = span / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
  };
  const ystep = nice((y1 - y0) / 4 || 1);
  y0 = Math.floor(y0 / ystep) * ystep; y1 = Math.ceil((y1 * 1.05) / ystep) * ystep;
  if (y1 === y0) y1 = y0 + ystep;
  const xstep = Math.max(1, nice((x1 - x0) / 8));
  const sx = (x) => M.l + ((x - x0) * (W - M.l - M.r)) / (x1 - x0);
  const sy = (y) => M.t + (H - M.t - M.b) * (1 - (y - y0) / (y1 - y0));
  const svg = document.createElementNS(NS, "svg");
  for (const [k, v] of Object.entries({ width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", class: "dx-line-plot" }))
    svg.setAttribute(k, v);
  svg.style.cssText = "max-width:100%;height:auto";
  const node = (parent, tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    parent.append(e);
    return e;
  };
  const label = (v) => String(Number(Number(v).toPrecision(4)));
  node(svg, "rect", { x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b, fill: "#f3f5fa" });
  for (let v = y0; v <= y1 + 1e-9; v += ystep) {
    node(svg, "line", { x1: M.l, x2: W - M.r, y1: sy(v), y2: sy(v), stroke: "#fff" });
    node(svg, "text", { x: M.l - 6, y: sy(v) + 4, "text-anchor": "end" }, label(v));
  }
  for (let v = Math.ceil(x0 / xstep) * xstep; v <= x1 + 1e-9; v += xstep)
    node(svg, "text", { x: sx(v), y: H - M.b + 14, "text-anchor": "middle" }, label(v));
  node(svg, "text", { x: W / 2, y: 16, "text-anchor": "middle", class: "dx-plot-title" }, spec.title || "");
  node(svg, "text", { x: (M.l + W - M.r) / 2, y: H - 6, "text-anchor": "middle" }, spec.x || "");
  node(svg, "text", { x: 12, y: (M.t + H - M.b) / 2, transform: `rotate(-90 12 ${(M.t + H - M.b) / 2})`,
                      "text-anchor": "middle" }, spec.y || "");
  const legend = el("div", { class: "dx-legend" });
  for (const s of spec.series) {
    const pts = s.xs.map((x, i) => [x, s.ys[i]]).filter(([, y]) => y !== null && y !== undefined);
    if (s.lines !== false && pts.length) {
      const d = pts.map(([x, y], i) => (i ? "L" : "M") + sx(x).toFixed(1) + "," + sy(y).toFixed(1)).join(" ");
      node(svg, "path", { d, fill: "none", stroke: s.colour, "stroke-width": 2, "stroke-dasharray": s.dash || "none",
                          class: "dx-series", "data-series": s.name });
    }
    if (s.markers !== false) pts.forEach(([x, y]) => {
      const dot = node(svg, "circle", { cx: sx(x), cy: sy(y), r: s.size || 3, fill: s.colour, class: "dx-point" });
      node(dot, "title", {}, s.name + ": " + label(x) + ", " + label(y));
    });
    const item = el("span");
    const swatch = el("i");
    swatch.style.borderTopColor = s.colour;
    item.append(swatch, s.name);
    legend.append(item);
  }
  const marksLayer = node(svg, "g", { class: "dx-marks" });
  host.append(svg, legend);
  return {
    svg,
    marks(points) {
      marksLayer.replaceChildren();
      for (const [x, y, colour] of points) {
        if (y === null || y === undefined) continue;
        node(marksLayer, "circle", { cx: sx(x), cy: sy(y), r: 7, fill: "none", stroke: colour || "#000", "stroke-width": 2,
                                     class: "dx-mark" });
      }
    },
  };
}

// ---- the parts every action view has (status line, progress, Stop, errors), as the shared render's ----
//   traits: status_html, error_text, busy, can_stop, progress_value, progress_max (TraceView);
//   buttons with class dx-action are off while an action runs (busy).
function actionShell(model, root) {
  const status = el("div", { class: "dx-status" });
  const progress = el("progress", { class: "dx-progress", max: "1", value: "0" });
  const stop = el("button", { type: "button", class: "dx-stop", title: "stop after the current step" }, "■ Stop");
  const errors = el("div", { class: "dx-errors dx-output" });
  stop.addEventListener("click", () => model.send({ action: "stop" }));
  const bar = el("div", { class: "dx-controls" });
  bar.append(stop, progress);
  root.append(bar, status, errors);
  const names = ["status_html", "error_text", "busy", "can_stop", "progress_value", "progress_max"];
  function draw() {
    status.innerHTML = model.get("status_html") || ""; // Python's HTML (Actions.say)
    errors.textContent = model.get("error_text") || "";
    errors.hidden = !errors.textContent;
    const busy = !!model.get("busy");
    stop.hidden = progress.hidden = !model.get("can_stop");
    stop.disabled = !busy;
    progress.max = Math.max(1, model.get("progress_max") || 1);
    progress.value = model.get("progress_value") || 0;
    root.classList.toggle("dx-busy", busy);
    root.querySelectorAll("button.dx-action").forEach((b) => { b.disabled = busy; });
  }
  for (const name of names) model.on("change:" + name, draw);
  draw();
  return { draw, destroy() { for (const name of names) model.off("change:" + name, draw); } };
}

// A labelled input box; `css` goes on the label box (the browser tests select by it).
function inputBox(label, css, value, attrs) {
  const box = el("label", { class: "dx-input " + css });
  const input = el("input", { type: "text", ...(attrs || {}) });
  input.value = value === null || value === undefined ? "" : String(value);
  input.addEventListener("keydown", (ev) => ev.stopPropagation()); // typing is not a notebook shortcut
  box.append(label + " ", input);
  return [box, input];
}

// A step slider (range input and readout) in a box with class `css`; onInput(k) on each move.
function stepSlider(label, css, max, value, onInput) {
  const box = el("div", { class: "dx-step-slider " + css });
  const lab = el("label", {}, label + " ");
  const slider = el("input", { type: "range", min: "0", max: String(Math.max(max, 0)), value: String(value), step: "1",
                               "aria-label": label });
  const readout = el("output", { class: "widget-readout" }, String(value));
  lab.append(slider);
  box.append(lab, readout);
  slider.addEventListener("input", () => { readout.textContent = slider.value; onInput(Number(slider.value)); });
  slider.addEventListener("keydown", (ev) => ev.stopPropagation()); // the range input moves itself
  return {
    box, slider,
    set(k) { slider.value = String(k); readout.textContent = slider.value; },
  };
}

// A picture panel: a title over an <img> with class `css` (hidden until it has a picture).
function picturePanel(title, css, size) {
  const box = el("div", { class: "dx-panel" });
  const t = el("b", { class: "dx-panel-title" }, title);
  const img = el("img", { class: css, width: String(size), alt: title });
  img.hidden = true;
  box.append(t, img);
  return { box, img, title: t, show(src) { if (src) { if (img.getAttribute("src") !== src) img.src = src; img.hidden = false; } else img.hidden = true; } };
}

// The pictures of `_frames` as blob URLs, each decoded now and kept decoded (the images are held).
function warmUrls(model) {
  const urls = blobUrls(model);
  const held = Object.values(urls).map((u) => { const im = new Image(); im.src = u; im.decode().catch(() => {}); return im; });
  return { urls, held, revoke() { Object.values(urls).forEach((u) => URL.revokeObjectURL(u)); } };
}
