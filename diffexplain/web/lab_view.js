// ------------------------------------------------------------------------------------------------
// The labs' helpers (NoiseLab, PromptSwap, ForwardProcess): diffexplain.widgets.lab_view.lab_bundle puts
// this file after trace_view.js (its el, addStyle, blobUrls, STEP_SYNC_MS in scope) and before the view's
// own module. A lab draws its controls here; each one's value lives in the `_controls` trait (Python's
// stand-ins mirror it): a move is drawn at once and reaches Python once it settles (STEP_SYNC_MS); a
// button sends {action: "click", name, controls} (the values as shown) and Python runs it with the busy
// state, Stop and errors. Pictures come once per run or fork (`_frames`), so scrubbing needs no kernel.
const LAB_CSS = `
.dx-lab .dx-controls label { display: inline-flex; align-items: center; gap: 4px; }
.dx-lab input[type=text], .dx-lab input[type=number], .dx-lab select { font-size: 0.95em; padding: 2px 4px; }
.dx-lab input[type=number] { width: 80px; }
.dx-lab .dx-range-pair input[type=range] { width: 90px; }
.dx-lab .dx-picture-frame { position: relative; display: inline-block; line-height: 0; }
.dx-lab .dx-rect { position: absolute; border: 2px solid #f00; box-sizing: border-box; pointer-events: none; }
.dx-lab.dx-busy .dx-lab-button { opacity: 0.6; }
.dx-lab .dx-strip { display: flex; flex-wrap: wrap; gap: 4px; }
.dx-lab .dx-panel b b { font-size: inherit; }
`;

function labStyle(root) {
  addCss(root, "dx-lab-view-style", LAB_CSS); // its own id: GuidanceLab's module has another LAB_CSS
}

function keepKeys(input) { // the page (JupyterLab's shortcuts) does not get a control's keys
  input.addEventListener("keydown", (ev) => ev.stopPropagation());
  return input;
}

/**
 * Mount a lab into `host`. build(lab) returns the nodes of the view (called again for each new view);
 * lab.onChange(fn) registers what to redraw when a control moves (in the browser or from Python).
 * layoutKey(data), where given: a new view with the same key keeps the nodes built (a control being
 * dragged keeps its focus) and only shows the new pictures.
 */
function mountLab(model, host, cssClass, build, layoutKey) {
  const root = el("div", { class: "dx-widget dx-view dx-lab " + cssClass, tabindex: "0",
                           "data-lm-suppress-shortcuts": "true" });
  host.append(root);
  addStyle(root); // once attached (a shadow root in marimo)
  labStyle(root);
  const body = el("div");
  const status = el("div", { class: "dx-status" });
  const errors = el("div", { class: "dx-errors dx-output" });
  const stop = el("button", { type: "button", class: "dx-stop", title: "stop after the current step" }, "■ Stop");
  const progress = el("progress", { class: "dx-progress", max: "1", value: "0" });
  stop.addEventListener("click", () => model.send({ action: "stop" }));
  const busyRow = el("div", { class: "dx-controls" });
  busyRow.append(progress, stop);
  root.append(body, busyRow, status, errors);
  let urls = {}, warm = [], saveTimer = null, refreshers = [], buttons = [], inputs = {};
  let controls = { ...(model.get("_controls") || {}) };

  function save() {
    saveTimer = null;
    model.set("_controls", { ...(model.get("_controls") || {}), ...controls });
    model.save_changes();
  }
  function refresh() { refreshers.forEach((fn) => fn()); }
  const lab = {
    model,
    data: () => model.get("_view") || {},
    url: (key) => urls[key] || null,
    get: (name) => controls[name],
    set(name, value) {
      controls[name] = value;
      refresh();
      clearTimeout(saveTimer);
      saveTimer = setTimeout(save, STEP_SYNC_MS);
    },
    onChange(fn) { refreshers.push(fn); },
    send(action, extra, buffers) {
      clearTimeout(saveTimer);
      saveTimer = null;
      model.send({ action, controls: { ...controls }, ...(extra || {}) }, undefined, buffers);
    },
    button(label, css, name, title) {
      const b = el("button", { type: "button", class: "dx-lab-button " + css, title: title || label }, label);
      b.addEventListener("click", () => lab.send("click", { name }));
      b.disabled = !!model.get("busy");
      buttons.push(b);
      return b;
    },
    bindInput(name, input, read, write) { // an element that shows control `name`
      write(controls[name]);
      inputs[name] = (inputs[name] || []).concat([write]);
      keepKeys(input);
      return input;
    },
    range(name, label, { min, max, step = 1, css = "" }) {
      const box = el("label", { class: "dx-range " + css });
      const input = el("input", { type: "range", min: String(min), max: String(max), step: String(step),
                                  "aria-label": label });
      const out = el("output", { class: "widget-readout" });
      const write = (v) => { input.value = String(v); out.textContent = String(v); };
      lab.bindInput(name, input, null, write);
      input.addEventListener("input", () => { out.textContent = input.value; lab.set(name, Number(input.value)); });
      box.append(label + " ", input, out);
      return box;
    },
    pair(name, label, { min = 0, max = 100, css = "" }) { // a range slider: [low, high]
      const box = el("label", { class: "dx-range-pair " + css });
      const lo = el("input", { type: "range", min: String(min), max: String(max), "aria-label": label + " from" });
      const hi = el("input", { type: "range", min: String(min), max: String(max), "aria-label": label + " to" });
      const out = el("output", { class: "widget-readout" });
      const write = (v) => { v = v || [min, max]; lo.value = String(v[0]); hi.value = String(v[1]); out.textContent = v[0] + "–" + v[1]; };
      lab.bindInput(name, lo, null, write);
      lab.bindInput(name, hi, null, () => {});
      const moved = () => {
        const a = Number(lo.value), b = Number(hi.value), v = [Math.min(a, b), Math.max(a, b)];
        out.textContent = v[0] + "–" + v[1];
        lab.set(name, v);
      };
      lo.addEventListener("input", moved); hi.addEventListener("input", moved);
      box.append(label + " ", lo, hi, out);
      return box;
    },
    number(name, label, { min, max, step = 1, css = "", float = false }) {
      const box = el("label", { class: css });
      const input = el("input", { type: "number", min: String(min), max: String(max), step: String(step), "aria-label": label });
      lab.bindInput(name, input, null, (v) => { input.value = String(v); });
      input.addEventListener("change", () => {
        const v = float ? Number(input.value) : Math.round(Number(input.value));
        if (Number.isFinite(v)) lab.set(name, v);
      });
      box.append(label + " ", input);
      return box;
    },
    text(name, label, { css = "", width = "" } = {}) {
      const box = el("label", { class: css });
      const input = el("input", { type: "text", "aria-label": label });
      if (width) input.style.width = width;
      lab.bindInput(name, input, null, (v) => { input.value = v === undefined || v === null ? "" : String(v); });
      input.addEventListener("change", () => lab.set(name, input.value));
      box.append(label + " ", input);
      return box;
    },
    check(name, label, { css = "", disabled = false } = {}) {
      const box = el("label", { class: css });
      const input = el("input", { type: "checkbox" });
      input.disabled = disabled;
      lab.bindInput(name, input, null, (v) => { input.checked = !!v; });
      input.addEventListener("change", () => lab.set(name, input.checked));
      box.append(input, " " + label);
      return box;
    },
    select(name, label, options, { css = "" } = {}) { // options: [[label, value], ...]
      const box = el("label", { class: css });
      const input = el("select", { "aria-label": label });
      options.forEach(([text, value], i) => input.append(el("option", { value: String(i) }, text)));
      lab.bindInput(name, input, null, (v) => {
        const i = options.findIndex(([, value]) => value === v);
        if (i >= 0) input.value = String(i);
      });
      input.addEventListener("change", () => lab.set(name, options[Number(input.value)][1]));
      box.append(label + " ", input);
      return box;
    },
    upload(label, css, accept) { // a file: its bytes go to Python as a binary buffer
      const box = el("label", { class: css });
      const input = el("input", { type: "file", accept: accept || "image/*", "aria-label": label });
      input.addEventListener("change", async () => {
        const f = input.files && input.files[0];
        if (f) lab.send("upload", { name: f.name }, [await f.arrayBuffer()]);
      });
      box.append(label + " ", input);
      return box;
    },
    picture(title, css, size) { // a titled picture; returns {box, img, title, frame}
      const box = el("div", { class: "dx-panel" });
      const head = el("b", { class: "dx-panel-title" });
      head.innerHTML = title;
      const frame = el("div", { class: "dx-picture-frame" });
      const img = el("img", { class: css, width: String(size), alt: head.textContent });
      frame.append(img);
      box.append(head, frame);
      return { box, img, title: head, frame };
    },
    show(img, key) { const src = urls[key]; if (src && img.getAttribute("src") !== src) img.src = src; img.hidden = !src; },
    row(...nodes) { const r = el("div", { class: "dx-controls" }); r.append(...nodes.filter(Boolean)); return r; },
    help(html) { const h = el("div", { class: "dx-help" }); h.innerHTML = html; return h; },
  };

  function drawStatus() {
    status.innerHTML = model.get("status_html") || "";
    errors.textContent = model.get("error_text") || "";
    errors.hidden = !errors.textContent;
    const busy = !!model.get("busy");
    stop.disabled = !busy;
    busyRow.hidden = !model.get("can_stop");
    progress.max = Math.max(1, model.get("progress_max") || 1);
    progress.value = model.get("progress_value") || 0;
    root.classList.toggle("dx-busy", busy);
    buttons.forEach((b) => { b.disabled = busy; });
  }
  let builtKey;
  function rebuild() {
    const old = urls;
    urls = blobUrls(model);
    warm = Object.values(urls).map((u) => { const im = new Image(); im.src = u; im.decode().catch(() => {}); return im; });
    const key = layoutKey ? layoutKey(lab.data()) : undefined;
    if (key === undefined || key !== builtKey || !refreshers.length) {
      builtKey = key;
      refreshers = []; buttons = []; inputs = {};
      body.replaceChildren(...build(lab));
    }
    Object.values(old).forEach((u) => URL.revokeObjectURL(u));
    drawStatus();
    refresh();
  }
  function fromPython() { // Python set a control (or took the browser's): show its values
    if (saveTimer) return; // the browser's own moves are on their way
    controls = { ...(model.get("_controls") || {}) };
    for (const [name, writes] of Object.entries(inputs)) writes.forEach((w) => w(controls[name]));
    refresh();
  }
  const STATUS = ["status_html", "error_text", "busy", "can_stop", "progress_value", "progress_max"];
  model.on("change:_version", rebuild);
  model.on("change:_controls", fromPython);
  STATUS.forEach((name) => model.on("change:" + name, drawStatus));
  rebuild();
  return () => {
    clearTimeout(saveTimer);
    model.off("change:_version", rebuild);
    model.off("change:_controls", fromPython);
    STATUS.forEach((name) => model.off("change:" + name, drawStatus));
    Object.values(urls).forEach((u) => URL.revokeObjectURL(u));
    warm = [];
  };
}

/**
 * A small SVG line chart (no plotting library). series: [{name, x: [], y: [], color, dash, dots}];
 * opts: {title, xLabel, yLabel, log (a log y axis), width, height, css, xMax, intX (whole x labels)}. Returns {node, mark(x, y)}:
 * mark draws the red marker at (x, y) (null hides it).
 */
function lineChart(series, opts = {}) {
  const W = opts.width || 440, H = opts.height || 240, M = { l: 56, r: 14, t: opts.title ? 22 : 8, b: 36 };
  const box = el("div", { class: "dx-chart " + (opts.css || "") });
  const svg = document.createElementNS(NS, "svg");
  for (const [k, v] of Object.entries({ width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" })) svg.setAttribute(k, v);
  svg.style.cssText = "max-width:100%;height:auto";
  const node = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  const tf = opts.log ? (v) => Math.log10(Math.max(v, 1e-12)) : (v) => v;
  const xs = [].concat(...series.map((s) => s.x)), ys = [].concat(...series.map((s) => s.y.map(tf)));
  let x0 = Math.min(0, ...xs), x1 = Math.max(opts.xMax || 1, ...xs);
  let y0 = ys.length ? Math.min(...ys) : 0, y1 = ys.length ? Math.max(...ys) : 1;
  if (!opts.log) y0 = Math.min(0, y0);
  if (y1 - y0 < 1e-9) y1 = y0 + 1;
  if (x1 - x0 < 1e-9) x1 = x0 + 1;
  const px = (x) => M.l + ((x - x0) * (W - M.l - M.r)) / (x1 - x0);
  const py = (y) => M.t + (H - M.t - M.b) * (1 - (tf(y) - y0) / (y1 - y0));
  node("rect", { x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b, fill: "#f3f5fa" });
  if (opts.title) node("text", { x: (M.l + W - M.r) / 2, y: 14, "text-anchor": "middle" }, opts.title);
  if (opts.log) { y0 = Math.floor(y0); y1 = Math.ceil(y1); } // whole decades
  const every = opts.log ? Math.max(1, Math.ceil((y1 - y0) / 5)) : 0;
  const yTicks = opts.log ? Array.from({ length: Math.floor((y1 - y0) / every) + 1 }, (_, i) => y0 + i * every)
                          : [0, 1, 2, 3, 4].map((i) => y0 + ((y1 - y0) * i) / 4);
  for (const yv of yTicks) {
    const y = M.t + (H - M.t - M.b) * (1 - (yv - y0) / (y1 - y0));
    node("line", { x1: M.l, x2: W - M.r, y1: y, y2: y, stroke: "#fff" });
    const label = opts.log ? "1e" + yv : g(Number(yv.toPrecision(3)));
    node("text", { x: M.l - 4, y: y + 4, "text-anchor": "end" }, label);
  }
  for (let i = 0; i <= 4; i++) {
    let xv = x0 + ((x1 - x0) * i) / 4;
    if (opts.intX) xv = Math.round(xv); // whole steps: the label sits at its own x
    node("text", { x: px(xv), y: H - M.b + 14, "text-anchor": "middle" }, g(Number(xv.toPrecision(3))));
  }
  if (opts.xLabel) node("text", { x: (M.l + W - M.r) / 2, y: H - 4, "text-anchor": "middle" }, opts.xLabel);
  if (opts.yLabel) node("text", { x: 12, y: (M.t + H - M.b) / 2, transform: `rotate(-90 12 ${(M.t + H - M.b) / 2})`,
                                  "text-anchor": "middle" }, opts.yLabel);
  const legend = el("div", { class: "dx-legend" });
  for (const s of series) {
    if (!s.x.length) continue;
    let d = "";
    s.x.forEach((x, i) => { d += (d ? " L" : "M") + px(x).toFixed(1) + "," + py(s.y[i]).toFixed(1); });
    node("path", { d, fill: "none", stroke: s.color, "stroke-width": 2, "stroke-dasharray": s.dash || "none",
                   class: "dx-series", "data-series": s.name });
    if (s.dots) s.x.forEach((x, i) => node("circle", { cx: px(x), cy: py(s.y[i]), r: 3, fill: s.color }));
    const item = el("span"), swatch = el("i");
    swatch.style.borderTopColor = s.color;
    if (s.dash) swatch.style.borderTopStyle = "dashed";
    item.append(swatch, s.name);
    legend.append(item);
  }
  const marker = node("circle", { r: 6, fill: "#e00", class: "dx-chart-marker" });
  box.append(svg, legend);
  return {
    node: box,
    mark(x, y) {
      marker.setAttribute("visibility", x === null || x === undefined ? "hidden" : "visible");
      if (x !== null && x !== undefined) { marker.setAttribute("cx", px(x)); marker.setAttribute("cy", py(y)); }
    },
  };
}
