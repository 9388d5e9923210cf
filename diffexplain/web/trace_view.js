// diffexplain's step view of one trace, in the browser: the StepExplorer's panels (x_t, the model's
// output, x̂0, the channels, ε_c, ε_u, Δ, ε̂), a step slider, play, keyboard scrubbing and a hand-drawn
// SVG timeline. ONE module for every place a trace is shown:
//   - the one-file HTML page (trace.to_html) inlines it and calls mountTraceView with data URIs;
//   - the anywidget views (diffexplain.widgets.StepExplorer, TracePlayer) load it as their _esm: the
//     default export's render({model, el}) reads the trace's pictures ONCE from a binary buffer (the
//     `_frames` trait) and scrubs, plays and hovers with no kernel round trip.
// No library, no network: the HTML page's Content-Security-Policy forbids loading anything.
"use strict";

export const PANEL_KEYS = ["xt", "x0", "channels", "eps_c", "eps_u", "delta", "guided"];
// The widgets' CSS classes of each picture (the browser tests select by them), beside dx-<key>-image.
const WIDGET_CSS = {
  xt: "dx-xt-image", x0: "dx-x0-image", channels: "dx-channels-image", eps_c: "dx-eps-cond-image",
  eps_u: "dx-eps-uncond-image", delta: "dx-delta-image", guided: "dx-eps-guided-image",
};
const EMPTY = {
  xt: "x_t\nnot kept in this trace", x0: "x̂0\nnot kept in this trace", channels: "not kept",
  eps_c: "ε_c not kept", eps_u: "ε_u not kept", delta: "Δ not kept", guided: "ε̂ not kept",
};
export const PLAY_INTERVAL_MS = 600;

export const CSS = `
.dx-view [hidden] { display: none !important; }
.dx-view { color: #222; font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
.dx-view:focus { outline: none; }
.dx-view h1 { font-size: 1.25em; margin: 0 0 4px; }
.dx-view h2 { font-size: 1.05em; margin: 22px 0 6px; }
.dx-view .dx-help { font-size: 0.9em; color: #444; max-width: 900px; margin: 6px 0 10px; line-height: 1.45; }
.dx-view .dx-header { margin: 4px 0 10px; }
.dx-view .dx-controls { display: flex; align-items: center; gap: 12px; flex-wrap: wrap; margin: 8px 0; }
.dx-view .dx-step-slider { display: flex; align-items: center; gap: 8px; }
.dx-view .dx-step-slider input[type=range] { width: min(420px, 70vw); }
.dx-view button { font-size: 1em; padding: 4px 14px; border: 1px solid #99a; border-radius: 4px;
                  background: #eef; cursor: pointer; }
.dx-view .dx-row { display: flex; flex-wrap: wrap; gap: 8px 14px; align-items: flex-start; margin: 6px 0; }
.dx-view .dx-panel { display: flex; flex-direction: column; align-items: center; }
.dx-view .dx-panel b { font-size: 0.85em; margin-bottom: 3px; max-width: 330px; text-align: center; }
.dx-view .dx-panel img { image-rendering: pixelated; background: #eee; }
.dx-view .dx-empty { display: flex; align-items: center; justify-content: center; background: #ebebeb;
                     color: #5a5a5a; font-size: 11px; white-space: pre-line; text-align: left; padding: 6px;
                     box-sizing: border-box; }
.dx-view .dx-step-info, .dx-view .dx-info { font-size: 0.9em; margin: 8px 0; }
.dx-view .dx-unet-row { font-size: 0.85em; margin: 4px 0; }
.dx-view .dx-unet-chip { display: inline-block; margin: 1px; padding: 1px 3px; border-radius: 3px;
                         font-size: 10px; border: 1px solid #99a; background: #eef; }
.dx-view .dx-unet-chip.dx-on { border-color: #d33; background: #fdd; }
.dx-view .dx-legend { font-size: 0.8em; display: flex; flex-wrap: wrap; gap: 4px 16px; margin: 2px 0 0 50px; }
.dx-view .dx-legend i { display: inline-block; width: 22px; height: 0; border-top: 2px solid;
                        vertical-align: middle; margin-right: 4px; }
.dx-view svg text { font-size: 11px; fill: #444; }
.dx-view .dx-note { font-size: 0.8em; color: #666; margin-top: 24px; }
.dx-view .dx-compare .dx-panel img { width: 160px; }
.dx-view .dx-status { font-size: 0.9em; min-height: 1.2em; }
.dx-view .dx-errors { font-family: monospace; font-size: 0.8em; white-space: pre-wrap; color: #b00;
                      max-height: 240px; overflow: auto; background: #fff5f5; margin: 4px 0; }
`;

const NS = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
const fmt = (v, d) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
const g = (v) => String(Number(Number(v).toPrecision(6)));

// A view's CSS goes where its root is drawn: the document's head, or the shadow root a front end draws
// widgets in (marimo), which the document's styles do not reach. Call it once the root is attached.
function styleScope(root) {
  const doc = root.ownerDocument || document;
  const scope = root.getRootNode ? root.getRootNode() : doc;
  const shadow = typeof ShadowRoot !== "undefined" && scope instanceof ShadowRoot;
  return { doc, target: shadow ? scope : doc.head || doc.documentElement, query: shadow ? scope : doc };
}

function addCss(root, id, css) {
  const { doc, target, query } = styleScope(root);
  if (query.getElementById ? query.getElementById(id) : query.querySelector("#" + id)) return;
  const style = doc.createElement("style");
  style.id = id;
  style.textContent = css;
  target.append(style);
}

function addStyle(root) {
  addCss(root, "dx-view-style", CSS);
}

/**
 * Draw the step view of one trace into `root`.
 * D: the view data (diffexplain.web.view_data; the HTML page's JSON block has the same keys).
 * picture(k, key): the URL of step k's picture `key` (one of PANEL_KEYS), or null; picture(null, "final").
 * opts.ids: give the page's element ids (#dx-step, #dx-info, ...: one view per page).
 * opts.onStep(k): called after each step shown (the anywidget syncs it to Python, debounced).
 * Returns {setStep(k), step(), play(), pause(), destroy()}.
 */
export function mountTraceView(root, D, picture, opts = {}) {
  addStyle(root);
  const n = D.steps.length, S = D.display_size;
  const id = (name) => (opts.ids ? { id: name } : {});
  root.classList.add("dx-view");
  root.setAttribute("tabindex", "0");
  root.setAttribute("data-lm-suppress-shortcuts", "true"); // JupyterLab: the arrows scrub, not move cells
  const timers = [];

  if (opts.title) root.append(el("h1", id("dx-title"), D.title));
  const hd = el("div", { class: "dx-header", ...id("dx-header") });
  const h = D.header, bold = (t) => el("b", {}, t);
  if (h.stage) hd.append(bold("stage " + h.stage), " · ");
  hd.append(bold("prompt"), ": “" + h.prompt + "” · ", bold("w"),
            " = " + h.w + " · seed " + h.seed + " · " + h.scheduler + " · " + h.steps + " steps" +
            (h.forked_from === null || h.forked_from === undefined ? "" : " · forked at step " + h.forked_from));
  if (h.model) hd.append(el("br"), el("span", { class: "dx-model-line" }, h.model)); // family · who read the prompt
  if (h.caption) { const cap = el("span"); cap.innerHTML = h.caption; hd.append(el("br"), cap); } // Python's HTML
  const help = el("div", { class: "dx-help", ...id("dx-help") });
  help.innerHTML = D.help; // the StepExplorer's own help text (diffexplain.explanations)
  root.append(help, hd);

  // ---- controls ----
  const controls = el("div", { class: "dx-controls" });
  const play = el("button", { type: "button", class: "dx-play", "aria-label": "play", ...id("dx-play") }, "▶ play");
  const sliderBox = el("div", { class: "dx-step-slider" });
  const label = el("label", {}, "step ");
  const slider = el("input", { type: "range", min: "0", max: String(Math.max(n - 1, 0)), value: "0", step: "1",
                               class: "dx-step", "aria-label": "step", ...id("dx-step") });
  label.append(slider);
  const readout = el("output", { class: "dx-step-readout widget-readout", ...id("dx-step-readout") }, "0");
  sliderBox.append(label, readout);
  controls.append(play, sliderBox);
  if (opts.extraControls) controls.append(...opts.extraControls);
  root.append(controls);

  // ---- picture panels ----
  const images = {};
  function panel(row, key, width) {
    const box = el("div", { class: "dx-panel" });
    const title = el("b", { class: "dx-panel-title" }, D.panels[key]);
    title.style.maxWidth = Math.max(width, 170) + "px";
    const img = el("img", { class: "dx-" + key + "-image " + WIDGET_CSS[key], width: String(width), alt: D.panels[key] });
    const empty = el("div", { class: "dx-empty" });
    empty.style.width = width + "px"; empty.style.height = S + "px"; empty.hidden = true;
    box.append(title, img, empty);
    row.append(box);
    images[key] = { img, empty, box };
  }
  const rowL = el("div", { class: "dx-row", ...id("dx-row-latents") });
  const rowE = el("div", { class: "dx-row", ...id("dx-row-eps") });
  panel(rowL, "xt", S); panel(rowL, "x0", S);
  if (!D.pixel_space) panel(rowL, "channels", 2 * S);
  panel(rowE, "eps_c", S); panel(rowE, "eps_u", S); panel(rowE, "delta", 2 * S); panel(rowE, "guided", S);
  const info = el("div", { class: "dx-info dx-step-info", ...id("dx-info") });
  root.append(rowL, rowE, info);
  const unet = D.unet ? el("div", { class: "dx-unet-row" }) : null;
  const chips = [];
  if (unet) {
    unet.append(el("div", {}, D.unet.text));
    const line = el("div");
    line.style.lineHeight = "1.1";
    D.steps.forEach((s, i) => {
      const chip = el("span", { class: "dx-unet-chip", title: "step " + i + ", t = " + g(s.t) });
      chip.append(D.unet.label, el("br"), "t=" + g(s.t));
      line.append(chip); chips.push(chip);
    });
    unet.append(line);
    root.append(unet);
  }

  function show(key, src, why) {
    const p = images[key];
    if (!p) return;
    if (src) { if (p.img.getAttribute("src") !== src) p.img.src = src; p.img.hidden = false; p.empty.hidden = true; }
    else { p.img.hidden = true; p.empty.hidden = false; p.empty.textContent = why; }
  }

  // ---- timeline: a hand-drawn SVG (no plotting library) ----
  const tbox = el("div", { class: "dx-timeline", ...id("dx-timeline-box") });
  const ttitle = el("div", id("dx-timeline-title"), D.timeline_title);
  ttitle.style.cssText = "font-size:0.9em;margin:10px 0 2px 50px";
  const W = 900, H = 260, M = { l: 50, r: 56, t: 12, b: 38 };
  const svg = document.createElementNS(NS, "svg");
  for (const [k, v] of Object.entries({ width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", class: "dx-timeline-svg",
                                        ...id("dx-timeline") })) svg.setAttribute(k, v);
  svg.style.cssText = "max-width:100%;height:auto;cursor:pointer";
  const legend = el("div", { class: "dx-legend", ...id("dx-legend") });
  tbox.append(ttitle, svg, legend);
  root.append(tbox);
  const COLORS = { c: "#636efa", u: "#ef553b", d: "#00cc96", cos: "#ab63fa", abar: "#ffa15a" };
  const DASH = { cos: "2,3", abar: "6,4" };
  const RIGHT = { cos: true, abar: true };
  const xs = (i) => M.l + (n > 1 ? (i * (W - M.l - M.r)) / (n - 1) : (W - M.l - M.r) / 2);
  const shownSeries = (key) => D.cfg || !["u", "d", "cos"].includes(key);
  const left = [].concat(D.series.c, shownSeries("u") ? D.series.u : [], shownSeries("d") ? D.series.d : [])
    .filter((v) => v !== null && v !== undefined);
  const niceStep = (span) => {
    const p = Math.pow(10, Math.floor(Math.log10(span))), f = span / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
  };
  const step0 = niceStep(Math.max(...left, 1e-6) / 4);
  const top = Math.ceil(Math.max(...left, 1e-6) * 1.05 / step0) * step0;
  const yl = (v) => M.t + (H - M.t - M.b) * (1 - v / top);
  const yr = (v) => M.t + (H - M.t - M.b) * (1 - (v + 0.05) / 1.1);
  const node = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  node("rect", { x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b, fill: "#f3f5fa" });
  for (let v = 0; v <= top + 1e-9; v += step0) {
    node("line", { x1: M.l, x2: W - M.r, y1: yl(v), y2: yl(v), stroke: "#fff" });
    node("text", { x: M.l - 6, y: yl(v) + 4, "text-anchor": "end" }, g(v));
  }
  for (const v of [0, 0.25, 0.5, 0.75, 1]) node("text", { x: W - M.r + 6, y: yr(v) + 4 }, g(v));
  const every = Math.max(1, Math.ceil(n / 12));
  for (let i = 0; i < n; i += every) node("text", { x: xs(i), y: H - M.b + 14, "text-anchor": "middle" }, i);
  node("text", { x: (M.l + W - M.r) / 2, y: H - 6, "text-anchor": "middle" }, D.axes.x);
  node("text", { x: 12, y: (M.t + H - M.b) / 2, transform: `rotate(-90 12 ${(M.t + H - M.b) / 2})`,
                 "text-anchor": "middle" }, D.axes.left);
  node("text", { x: W - 10, y: (M.t + H - M.b) / 2, transform: `rotate(90 ${W - 10} ${(M.t + H - M.b) / 2})`,
                 "text-anchor": "middle" }, D.axes.right);
  for (const key of Object.keys(D.series_names)) {
    const ys = D.series[key];
    if (!shownSeries(key) || !ys.some((v) => v !== null)) continue;
    const y = RIGHT[key] ? yr : yl;
    let d = "";
    ys.forEach((v, i) => { if (v !== null) d += (d ? " L" : "M") + xs(i).toFixed(1) + "," + y(v).toFixed(1); });
    node("path", { d, fill: "none", stroke: COLORS[key], "stroke-width": 2, "stroke-dasharray": DASH[key] || "none",
                   class: "dx-series", "data-series": key });
    if (!RIGHT[key]) ys.forEach((v, i) => {
      if (v === null) return;
      const dot = node("circle", { cx: xs(i), cy: y(v), r: 3, fill: COLORS[key] });
      dot.append(Object.assign(document.createElementNS(NS, "title"),
                               { textContent: D.series_names[key] + ", step " + i + ": " + fmt(v, 4) }));
    });
    const item = el("span");
    const swatch = el("i");
    swatch.style.borderTopColor = COLORS[key];
    if (DASH[key]) swatch.style.borderTopStyle = "dashed";
    item.append(swatch, D.series_names[key]);
    legend.append(item);
  }
  const cursor = node("line", { y1: M.t, y2: H - M.b, stroke: "#888", "stroke-width": 1, class: "dx-cursor", ...id("dx-cursor") });
  const marker = node("path", { fill: "#19d3f3", stroke: "#333", "stroke-width": 0.5, class: "dx-marker", ...id("dx-marker") });
  const nearest = (ev) => {
    const r = svg.getBoundingClientRect();
    const x = ((ev.clientX - r.left) * W) / r.width;
    let best = 0;
    for (let i = 0; i < n; i++) if (Math.abs(xs(i) - x) < Math.abs(xs(best) - x)) best = i;
    return best;
  };
  svg.addEventListener("click", (ev) => { pause(); setStep(nearest(ev)); });

  // ---- the final picture, and the guidance pair (the HTML page's) ----
  const finalSrc = picture(null, "final");
  if (finalSrc) {
    const box = el("div", { class: "dx-final", ...id("dx-final-box") });
    box.append(el("h2", {}, D.final_label));
    const img = el("img", { src: finalSrc, width: String(S), alt: "final picture", class: "dx-final-image" });
    img.style.imageRendering = "pixelated";
    box.append(img);
    root.append(box);
  }
  const C = D.compare;
  const pair = [];
  if (C) {
    const sec = el("section", { class: "dx-compare", ...id("dx-compare") });
    sec.append(el("h2", {}, C.labels[0] + " | " + C.labels[1]), el("div", { class: "dx-help" }, C.caption));
    const fig = (src, text, cls) => {
      const box = el("div", { class: "dx-panel" });
      box.append(el("b", {}, text));
      const img = el("img", { alt: text, class: cls });
      if (src) img.src = src;
      box.append(img);
      return [box, img];
    };
    if (C.x0) {
      const row = el("div", { class: "dx-row" });
      for (let j = 0; j < 2; j++) {
        const [box, img] = fig(null, "x̂0 at this step, " + C.labels[j], "dx-compare-x0-" + j);
        row.append(box);
        pair.push(img);
      }
      sec.append(row);
    }
    const row = el("div", { class: "dx-row" });
    row.append(fig(C.final[0], "final picture, " + C.labels[0], "dx-compare-final-0")[0]);
    row.append(fig(C.final[1], "final picture, " + C.labels[1], "dx-compare-final-1")[0]);
    if (C.difference) row.append(fig(C.difference, "difference", "dx-compare-difference")[0]);
    sec.append(row);
    root.append(sec);
  }
  if (D.note) root.append(el("p", { class: "dx-note", ...id("dx-note") }, D.note));

  // ---- one step ----
  let current = -1;
  function setStep(k, quiet) {
    k = Math.max(0, Math.min(n - 1, k | 0));
    if (String(k) !== slider.value) slider.value = String(k);
    readout.textContent = k;
    if (k === current) return k;
    current = k;
    const s = D.steps[k];
    for (const key of ["xt", "x0", "channels", "eps_c", "guided"]) show(key, picture(k, key), EMPTY[key]);
    show("eps_u", D.cfg ? picture(k, "eps_u") : null, D.cfg ? EMPTY.eps_u : D.guidance_off);
    show("delta", D.cfg ? picture(k, "delta") : null, D.cfg ? EMPTY.delta : D.guidance_off);
    const c = D.series.c[k];
    const parts = ["<b>step " + k + "</b> of " + n + " (0-based)", "t = " + g(s.t), "ᾱ_t = " + fmt(s.abar, 4),
                   "σ_t = " + fmt(s.sigma, 3)];
    if (c !== null) parts.push("‖ε_c‖ = " + fmt(c, 3));
    if (D.cfg && D.series.d[k] !== null) parts.push("‖Δ‖ = " + fmt(D.series.d[k], 3), "cos(ε_c, ε_u) = " + fmt(D.series.cos[k], 3));
    else if (!D.cfg) parts.push("guidance off: no ε_u, no Δ");
    info.innerHTML = parts.join(" · ");
    for (const p of Object.values(images)) p.img.dataset.step = String(k); // which step each picture shows
    chips.forEach((chip, i) => chip.classList.toggle("dx-on", i === k));
    cursor.setAttribute("x1", xs(k)); cursor.setAttribute("x2", xs(k));
    const my = yl(c === null ? 0 : c), mx = xs(k);
    marker.setAttribute("d", `M${mx},${my - 8} L${mx + 7},${my} L${mx},${my + 8} L${mx - 7},${my} Z`);
    if (C && C.x0) pair.forEach((im, j) => { if (C.x0[k][j]) im.src = C.x0[k][j]; });
    if (!quiet && opts.onStep) opts.onStep(k);
    return k;
  }
  slider.addEventListener("input", () => setStep(Number(slider.value)));
  slider.addEventListener("keydown", (ev) => ev.stopPropagation()); // the range input moves itself
  root.addEventListener("keydown", (ev) => {
    if (ev.target !== root) return; // a focused control handles its own keys
    const to = { ArrowRight: current + 1, ArrowUp: current + 1, ArrowLeft: current - 1, ArrowDown: current - 1,
                 Home: 0, End: n - 1, PageUp: current + 5, PageDown: current - 5 }[ev.key];
    if (to === undefined && ev.key !== " ") return;
    ev.preventDefault(); ev.stopPropagation();
    if (ev.key === " ") { toggle(); return; }
    pause(); setStep(to);
  });

  // ---- play ----
  let timer = null;
  function pause() { if (timer) clearInterval(timer); timer = null; play.textContent = "▶ play"; }
  function start() {
    if (current >= n - 1) setStep(0);
    play.textContent = "❚❚ pause";
    timer = setInterval(() => { if (current + 1 > n - 1) pause(); else setStep(current + 1); }, PLAY_INTERVAL_MS);
  }
  function toggle() { if (timer) pause(); else start(); }
  play.addEventListener("click", toggle);
  setStep(opts.step || 0, true);
  return {
    setStep: (k) => setStep(k, true),
    step: () => current,
    play: start,
    pause,
    destroy() { pause(); timers.forEach(clearTimeout); root.replaceChildren(); },
  };
}

// ------------------------------------------------------------------------------------------------
// The anywidget view. Traits (diffexplain.widgets.trace_view.TraceView):
//   _view: the view data (JSON);  _frames: every picture of the trace, PNGs end to end (ONE binary
//   buffer); _index: {"k/key": [offset, length]} into it;  _version: bumped when a new trace is sent;
//   step: the step shown (set here on scrubbing, sent to Python once scrubbing settles);
//   status_html, error_text, busy, can_stop, progress_value, progress_max: what Python says; messages {"action": ...} go to Python.
export const STEP_SYNC_MS = 250; // the step reaches Python this long after the last move (never per key)

function blobUrls(model) {
  const frames = model.get("_frames"), index = model.get("_index") || {};
  const urls = {};
  if (!frames) return urls;
  const view = frames instanceof DataView ? frames : new DataView(frames.buffer || frames);
  for (const [key, [offset, length]] of Object.entries(index)) {
    const bytes = new Uint8Array(view.buffer, view.byteOffset + offset, length);
    urls[key] = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
  }
  return urls;
}

function render({ model, el: host }) {
  const root = document.createElement("div");
  root.classList.add("dx-widget", "dx-view");
  host.append(root);
  addStyle(root); // once attached: inside a shadow root where the front end draws in one
  const top = document.createElement("div");
  const body = document.createElement("div");
  const status = el("div", { class: "dx-status" });
  const errors = el("div", { class: "dx-errors dx-output" });
  const stop = el("button", { type: "button", class: "dx-stop", title: "stop after the current step" }, "■ Stop");
  const progress = el("progress", { class: "dx-progress", max: "1", value: "0" });
  stop.addEventListener("click", () => model.send({ action: "stop" }));
  root.append(top, body, status, progress, stop, errors);
  let urls = {}, view = null, syncTimer = null, warm = [];

  function drawStatus() {
    status.innerHTML = model.get("status_html") || "";
    errors.textContent = model.get("error_text") || "";
    errors.hidden = !errors.textContent;
    const busy = model.get("busy");
    stop.hidden = !model.get("can_stop");
    stop.disabled = !busy;
    progress.hidden = !model.get("can_stop");
    progress.max = Math.max(1, model.get("progress_max") || 1);
    progress.value = model.get("progress_value") || 0;
    root.classList.toggle("dx-busy", !!busy);
  }
  function rebuild() {
    if (view) view.destroy();
    Object.values(urls).forEach((u) => URL.revokeObjectURL(u));
    view = null;
    warm = [];
    const D = model.get("_view");
    top.replaceChildren(...loader(D || {}));
    body.replaceChildren();
    if (!D || !D.steps || !D.steps.length) return;
    urls = blobUrls(model);
    // every picture decoded now and kept decoded (the images held here): a step change then only swaps src
    warm = Object.values(urls).map((u) => { const im = new Image(); im.src = u; im.decode().catch(() => {}); return im; });
    const picture = (k, key) => urls[k === null ? key : k + "/" + key] || null;
    view = mountTraceView(body, D, picture, {
      step: model.get("step"),
      extraControls: controls(D),
      onStep(k) { // shown at once; Python hears of it once scrubbing settles
        clearTimeout(syncTimer);
        syncTimer = setTimeout(() => { model.set("step", k); model.save_changes(); }, STEP_SYNC_MS);
      },
    });
  }
  function loader(D) { // TracePlayer: a trace file's path and Load, or an upload (the bytes go as a buffer)
    if (!D.loader) return [];
    const help = el("div", { class: "dx-help" });
    help.innerHTML = D.loader.help;
    const row = el("div", { class: "dx-controls dx-loader" });
    const path = el("input", { type: "text", class: "dx-trace-path", placeholder: "path/to/run.trace",
                               "aria-label": "trace file" });
    path.value = D.loader.path || "";
    path.style.width = "420px";
    const load = el("button", { type: "button", class: "dx-load-button" }, "Load");
    load.addEventListener("click", () => model.send({ action: "load", path: path.value }));
    path.addEventListener("keydown", (ev) => { ev.stopPropagation(); if (ev.key === "Enter") load.click(); });
    const file = el("input", { type: "file", class: "dx-trace-upload", "aria-label": "upload a trace file" });
    file.addEventListener("change", async () => {
      const f = file.files && file.files[0];
      if (f) model.send({ action: "upload", name: f.name }, undefined, [await f.arrayBuffer()]);
    });
    row.append(el("label", {}, "trace file "), path, load, el("label", {}, "upload "), file);
    return [help, row];
  }
  function controls(D) { // what needs Python: another stage of a cascade, decoded pictures or the fast preview
    const out = [];
    if (D.stages && D.stages.length > 1) {
      const box = el("div", { class: "dx-stage-chooser", role: "group" });
      for (const name of D.stages) {
        const b = el("button", { type: "button", class: "dx-stage" + (name === D.header.stage ? " dx-on" : "") }, "stage " + name);
        b.disabled = name === D.header.stage;
        b.addEventListener("click", () => model.send({ action: "stage", name }));
        box.append(b);
      }
      out.push(box);
    }
    if (D.preview && D.preview.shown) {
      const label = el("label", { class: "dx-preview-toggle" });
      const box = el("input", { type: "checkbox" });
      box.checked = !!D.preview.value; box.disabled = !!D.preview.disabled;
      box.addEventListener("change", () => model.send({ action: "preview", value: box.checked }));
      label.append(box, " fast latent preview (no VAE)");
      out.push(label);
    }
    return out;
  }
  const onStep = () => { if (view && model.get("step") !== view.step()) view.setStep(model.get("step")); };
  model.on("change:_version", rebuild);
  model.on("change:step", onStep);
  for (const name of ["status_html", "error_text", "busy", "can_stop", "progress_value", "progress_max"]) model.on("change:" + name, drawStatus);
  drawStatus();
  rebuild();
  return () => {
    clearTimeout(syncTimer);
    model.off("change:_version", rebuild);
    model.off("change:step", onStep);
    for (const name of ["status_html", "error_text", "busy", "can_stop", "progress_value", "progress_max"]) model.off("change:" + name, drawStatus);
    if (view) view.destroy();
    Object.values(urls).forEach((u) => URL.revokeObjectURL(u));
  };
}

export default { render };
