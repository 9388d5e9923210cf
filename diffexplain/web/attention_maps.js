// AttentionMaps in the browser (diffexplain.widgets.AttentionMaps): the token, step, layer, "all steps" and
// branch are chosen here and redrawn here, from maps sent ONCE (the `_maps` trait: uint8 maps end to end,
// each scaled by its own peak; `_view.maps` says where each [T, h, w] block is) and the x̂0 pictures
// (`_frames`). The choices reach Python once they settle (ATTN_SYNC_MS); the reweight fork and the fast
// preview are messages to Python. Bundled after trace_view.js (diffexplain.web.bundle): el, addStyle,
// blobUrls, NS and the shared CSS are in scope.

const ATTN_SYNC_MS = 250;
const HEAT = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]]; // render.HEAT_STOPS
const ATTN_CSS = `
.dx-view .dx-attn-controls select { max-width: 300px; }
.dx-view .dx-branch button.dx-on { background: #cde; border-color: #557; }
.dx-view .dx-attn-panel img { image-rendering: auto; }
.dx-view .dx-token-shares svg text { font-size: 10px; }
.dx-view .dx-token-shares rect.dx-bar:hover { opacity: 0.7; }
`;

function heatRgb(q) { // q in 0..255 (the map over its peak) → the heat ramp's colour
  const pos = (q / 255) * (HEAT.length - 1);
  const low = Math.min(Math.floor(pos), HEAT.length - 2), f = pos - low;
  return HEAT[low].map((c, i) => Math.round(c * (1 - f) + HEAT[low + 1][i] * f));
}

function mountAttentionMaps(root, D, model, pictures, maps) {
  const S = D.size, n = D.steps;
  const timers = [];
  const state = {
    token: model.get("token_index"), step: model.get("map_step"), layer: model.get("layer_key"),
    all: model.get("all_steps_on"), branch: model.get("branch_name"),
  };
  const help = el("div", { class: "dx-help" });
  help.innerHTML = D.help;
  const header = el("div", { class: "dx-header" });
  header.innerHTML = D.header;
  root.append(help, header);

  // ---- controls ----
  const row1 = el("div", { class: "dx-controls dx-attn-controls" });
  const token = el("select", { class: "dx-token", "aria-label": "token" });
  const layer = el("select", { class: "dx-layer", "aria-label": "layers" });
  for (const [label, value] of D.layers) layer.append(el("option", { value }, label));
  row1.append(el("label", {}, "token "), token, el("label", {}, "layers "), layer);
  const row2 = el("div", { class: "dx-controls dx-attn-controls" });
  const stepBox = el("div", { class: "dx-step-slider dx-attention-step" });
  const slider = el("input", { type: "range", min: "0", max: String(Math.max(n - 1, 0)), step: "1",
                               class: "dx-step", "aria-label": "step" });
  const readout = el("output", { class: "dx-step-readout widget-readout" }, "0");
  const stepLabel = el("label", {}, "step ");
  stepLabel.append(slider);
  stepBox.append(stepLabel, readout);
  const allLabel = el("label", { class: "dx-all-steps" });
  const all = el("input", { type: "checkbox" });
  allLabel.append(all, " average over all steps");
  row2.append(stepBox, allLabel);
  if (D.preview.shown) {
    const label = el("label", { class: "dx-preview-toggle" });
    const box = el("input", { type: "checkbox" });
    box.checked = !!D.preview.value; box.disabled = !!D.preview.disabled;
    box.addEventListener("change", () => model.send({ action: "preview", value: box.checked }));
    label.append(box, " fast latent preview (no VAE)");
    row2.append(label);
  }
  const branch = el("div", { class: "dx-branch", role: "group" });
  const branchButtons = {};
  for (const [name, text] of [["cond", "cond: the prompt"], ["uncond", "uncond: negative"]]) {
    const b = el("button", { type: "button", "data-branch": name }, text);
    b.disabled = !D.tokens[name];
    b.addEventListener("click", () => { state.branch = name; fillTokens(); draw(true); });
    branch.append(b);
    branchButtons[name] = b;
  }
  root.append(row1, row2, branch);

  // ---- panels ----
  const row = el("div", { class: "dx-row" });
  const panel = (cls, title) => {
    const box = el("div", { class: "dx-panel dx-attn-panel" });
    const t = el("b", {}, title);
    const img = el("img", { class: cls, width: String(S), height: String(S), alt: title });
    box.append(t, img);
    row.append(box);
    return [img, t];
  };
  const [overlayImg] = panel("dx-overlay-image", "map over x̂0 at this step");
  const [mapImg] = panel("dx-map-image", "the map alone");
  const [beforeImg] = panel("dx-before-image", "final picture");
  const [afterImg, afterTitle] = panel("dx-after-image", "reweighted (fork)");
  const afterEmpty = el("div", { class: "dx-empty" }, "fork with a\nreweighted token");
  afterEmpty.style.width = S + "px"; afterEmpty.style.height = S + "px";
  afterImg.after(afterEmpty);
  if (pictures.before) beforeImg.src = pictures.before;
  const info = el("div", { class: "dx-info dx-attention-info" });
  root.append(row, info);

  // ---- the fork ----
  const forkRow = el("div", { class: "dx-controls" });
  const factor = el("input", { type: "range", min: "0", max: "3", step: "0.1", value: "0", class: "dx-factor-input",
                               "aria-label": "reweight factor" });
  const factorOut = el("output", { class: "widget-readout" }, "0");
  const factorBox = el("label", { class: "dx-factor" }, "reweight ");
  factorBox.append(factor, factorOut);
  const forkStep = el("input", { type: "range", min: "0", max: String(Math.max(n - 1, 0)), step: "1", value: "0",
                                 class: "dx-fork-step-input", "aria-label": "fork from step" });
  const forkOut = el("output", { class: "widget-readout" }, "0");
  const forkBox = el("label", { class: "dx-fork-step" }, "from step ");
  forkBox.append(forkStep, forkOut);
  const fork = el("button", { type: "button", class: "dx-reweight-button" }, "Fork with the token reweighted");
  factor.addEventListener("input", () => { factorOut.textContent = factor.value; });
  forkStep.addEventListener("input", () => { forkOut.textContent = forkStep.value; });
  for (const input of [factor, forkStep, slider]) input.addEventListener("keydown", (ev) => ev.stopPropagation());
  fork.addEventListener("click", () => {
    sync(true);
    model.send({ action: "reweight", factor: Number(factor.value), step: Number(forkStep.value) });
  });
  forkRow.append(factorBox, forkBox, fork);
  root.append(forkRow);

  // ---- per-token bars: a hand-drawn SVG ----
  const bars = el("div", { class: "dx-token-shares" });
  const barsTitle = el("div", {}, "share of the picture's attention per token, at this step");
  barsTitle.style.cssText = "font-size:0.9em;margin:10px 0 2px 50px";
  const svg = document.createElementNS(NS, "svg");
  svg.style.cssText = "max-width:100%;height:auto";
  bars.append(barsTitle, svg);
  root.append(bars);

  // ---- drawing ----
  const mapCanvas = document.createElement("canvas");
  mapCanvas.width = maps.w; mapCanvas.height = maps.h;
  const out = document.createElement("canvas");
  out.width = S; out.height = Math.round((S * maps.h) / maps.w);
  const x0Images = {};
  function x0Image(k) { // the x̂0 picture of step k, decoded once
    if (!pictures[k + "/x0"]) return null;
    if (!x0Images[k]) { const im = new Image(); im.src = pictures[k + "/x0"]; x0Images[k] = im; }
    return x0Images[k];
  }
  function fillTokens() {
    const list = D.tokens[state.branch] || [];
    token.replaceChildren(...list.map(([label, index]) => el("option", { value: String(index) }, label)));
    if (state.token >= list.length) state.token = 0;
    token.value = String(state.token);
    for (const [name, b] of Object.entries(branchButtons)) b.classList.toggle("dx-on", name === state.branch);
  }
  function block() {
    const first = D.first_step[state.branch] || 0;
    const key = state.branch + "|" + state.layer + "|" + (state.all ? "all" : Math.max(state.step, first));
    return maps.blocks[key] || null;
  }
  let drawn = 0;
  function draw(changed) {
    const k = Math.max(0, Math.min(n - 1, state.step));
    slider.value = String(k); readout.textContent = String(k);
    all.checked = !!state.all; layer.value = state.layer;
    const b = block(), list = D.tokens[state.branch] || [];
    const T = list.length, hw = maps.h * maps.w;
    if (!b || !T) { info.textContent = "no maps for this choice"; return; }
    // the map: uint8 over its own peak → heat colours
    const q = new Uint8Array(maps.data.buffer, maps.data.byteOffset + b.offset + state.token * hw, hw);
    const ctx = mapCanvas.getContext("2d"), pixels = ctx.createImageData(maps.w, maps.h);
    for (let i = 0; i < hw; i++) {
      const [r, g2, bl] = heatRgb(q[i]);
      pixels.data[4 * i] = r; pixels.data[4 * i + 1] = g2; pixels.data[4 * i + 2] = bl; pixels.data[4 * i + 3] = 255;
    }
    ctx.putImageData(pixels, 0, 0);
    const octx = out.getContext("2d");
    octx.imageSmoothingEnabled = true;
    octx.globalAlpha = 1;
    octx.drawImage(mapCanvas, 0, 0, out.width, out.height);
    mapImg.src = out.toDataURL();
    mapImg.dataset.step = String(k);
    const ticket = ++drawn;
    const base = state.all ? x0Image(n - 1) : x0Image(k);
    const paint = () => { // Image.blend(x̂0, heat, 0.6), as render.overlay
      if (ticket !== drawn) return;
      octx.globalAlpha = 1;
      if (base) octx.drawImage(base, 0, 0, out.width, out.height);
      else { octx.fillStyle = "#000"; octx.fillRect(0, 0, out.width, out.height); }
      octx.globalAlpha = 0.6;
      octx.drawImage(mapCanvas, 0, 0, out.width, out.height);
      overlayImg.src = out.toDataURL();
      overlayImg.dataset.step = String(k);
    };
    if (base && !base.complete) base.decode().then(paint, paint); else paint();
    const where = state.all ? "all steps" : "step " + k + " (t = " + g(D.timesteps[k]) + ")";
    const label = (list[state.token] || ["?"])[0];
    const layerLabel = (D.layers.find(([, v]) => v === state.layer) || ["?"])[0];
    info.replaceChildren("token ", el("b", {}, label), " · " + where + " · " + layerLabel + " · " + state.branch +
      ": peak " + fmt(b.peak[state.token], 3) + ", mean " + fmt(b.mean[state.token], 3) +
      " (a token read evenly everywhere by every pixel would have 1/" + T + ")");
    drawBars(b.mean, list);
    if (changed) sync(false);
  }
  function drawBars(means, list) {
    const W = Math.max(500, 24 * list.length + 70), H = 290, M = { l: 50, r: 10, t: 10, b: 140 };
    svg.replaceChildren();
    for (const [k, v] of Object.entries({ width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" })) svg.setAttribute(k, v);
    const node = (tag, attrs, text) => {
      const e = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      if (text !== undefined) e.textContent = text;
      svg.append(e);
      return e;
    };
    const top = Math.max(...means, 1e-6) * 1.05, bw = (W - M.l - M.r) / list.length;
    const y = (v) => M.t + (H - M.t - M.b) * (1 - v / top);
    node("rect", { x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b, fill: "#f3f5fa" });
    for (const v of [0, top / 2, top]) node("text", { x: M.l - 4, y: y(v) + 4, "text-anchor": "end" }, fmt(v, 3));
    node("text", { x: 12, y: (H - M.b) / 2, transform: `rotate(-90 12 ${(H - M.b) / 2})`, "text-anchor": "middle" },
         "mean over pixels");
    list.forEach(([label], i) => {
      const x = M.l + i * bw, on = i === state.token;
      const bar = node("rect", { x: x + 1, y: y(means[i]), width: Math.max(bw - 2, 1), height: y(0) - y(means[i]),
                                 fill: on ? "#d62728" : "#1f77b4", class: "dx-bar" + (on ? " dx-on" : "") });
      bar.append(Object.assign(document.createElementNS(NS, "title"), { textContent: label + ": " + fmt(means[i], 4) }));
      bar.addEventListener("click", () => { state.token = i; token.value = String(i); draw(true); });
      const tx = x + bw / 2, ty = H - M.b + 8;
      node("text", { x: tx, y: ty, transform: `rotate(-60 ${tx} ${ty})`, "text-anchor": "end" }, label);
    });
  }
  let syncTimer = null;
  function sync(now) { // the choices reach Python once they settle
    clearTimeout(syncTimer);
    const send = () => {
      model.set("token_index", state.token); model.set("map_step", state.step);
      model.set("layer_key", state.layer); model.set("all_steps_on", state.all); model.set("branch_name", state.branch);
      model.save_changes();
    };
    if (now) send(); else { syncTimer = setTimeout(send, ATTN_SYNC_MS); timers.push(syncTimer); }
  }
  token.addEventListener("change", () => { state.token = Number(token.value); draw(true); });
  layer.addEventListener("change", () => { state.layer = layer.value; draw(true); });
  all.addEventListener("change", () => { state.all = all.checked; draw(true); });
  slider.addEventListener("input", () => { state.step = Number(slider.value); draw(true); });
  root.setAttribute("tabindex", "0");
  root.setAttribute("data-lm-suppress-shortcuts", "true");
  root.addEventListener("keydown", (ev) => { // the arrows scrub the steps, as in the step view
    if (ev.target !== root) return;
    const to = { ArrowRight: state.step + 1, ArrowUp: state.step + 1, ArrowLeft: state.step - 1,
                 ArrowDown: state.step - 1, Home: 0, End: n - 1 }[ev.key];
    if (to === undefined) return;
    ev.preventDefault(); ev.stopPropagation();
    state.step = Math.max(0, Math.min(n - 1, to));
    draw(true);
  });
  fillTokens();
  draw(false);
  return {
    update(name, value) { // Python changed a choice (a linked StepExplorer, code)
      const key = { token_index: "token", map_step: "step", layer_key: "layer", all_steps_on: "all", branch_name: "branch" }[name];
      if (state[key] === value) return;
      state[key] = value;
      if (key === "branch") fillTokens();
      token.value = String(state.token);
      draw(false);
    },
    after(src, title) {
      if (src) afterImg.src = src; else afterImg.removeAttribute("src");
      afterImg.hidden = !src; afterEmpty.hidden = !!src;
      afterTitle.innerHTML = title || "<b>reweighted (fork)</b>";
    },
    forkState(disabled, tooltip) { fork.disabled = !!disabled; fork.title = tooltip || ""; },
    destroy() { timers.forEach(clearTimeout); root.replaceChildren(); },
  };
}

function renderAttentionMaps({ model, el: host }) {
  const root = document.createElement("div");
  root.classList.add("dx-widget", "dx-view", "dx-attention-maps");
  host.append(root);
  addStyle(root); // once attached (a shadow root in marimo)
  addCss(root, "dx-attn-style", ATTN_CSS);
  const body = document.createElement("div");
  const status = el("div", { class: "dx-status" });
  const errors = el("div", { class: "dx-errors dx-output" });
  const stop = el("button", { type: "button", class: "dx-stop", title: "stop after the current step" }, "■ Stop");
  const progress = el("progress", { class: "dx-progress", max: "1", value: "0" });
  stop.addEventListener("click", () => model.send({ action: "stop" }));
  root.append(body, status, progress, stop, errors);
  let urls = {}, view = null, afterUrl = null;

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
  function drawAfter() {
    if (!view) return;
    if (afterUrl) URL.revokeObjectURL(afterUrl);
    const bytes = model.get("_after");
    const n = bytes ? bytes.byteLength : 0;
    afterUrl = n ? URL.createObjectURL(new Blob([bytes], { type: "image/png" })) : null;
    view.after(afterUrl, model.get("after_html"));
  }
  function drawFork() { if (view) view.forkState(model.get("fork_disabled"), model.get("fork_tooltip")); }
  function rebuild() {
    if (view) view.destroy();
    Object.values(urls).forEach((u) => URL.revokeObjectURL(u));
    view = null;
    const D = model.get("_view");
    body.replaceChildren();
    if (!D || !D.steps || !D.maps) return;
    urls = blobUrls(model);
    const raw = model.get("_maps");
    const data = raw instanceof DataView ? new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength)
      : new Uint8Array(raw.buffer || raw);
    view = mountAttentionMaps(body, D, model, urls, { ...D.maps, data });
    drawAfter();
    drawFork();
  }
  const CHOICES = ["token_index", "map_step", "layer_key", "all_steps_on", "branch_name"];
  const onChoice = {};
  for (const name of CHOICES) onChoice[name] = () => { if (view) view.update(name, model.get(name)); };
  const STATUS = ["status_html", "error_text", "busy", "can_stop", "progress_value", "progress_max"];
  model.on("change:_version", rebuild);
  model.on("change:_after", drawAfter);
  model.on("change:after_html", drawAfter);
  model.on("change:fork_disabled", drawFork);
  model.on("change:fork_tooltip", drawFork);
  for (const name of CHOICES) model.on("change:" + name, onChoice[name]);
  for (const name of STATUS) model.on("change:" + name, drawStatus);
  drawStatus();
  rebuild();
  return () => {
    model.off("change:_version", rebuild);
    model.off("change:_after", drawAfter);
    model.off("change:after_html", drawAfter);
    model.off("change:fork_disabled", drawFork);
    model.off("change:fork_tooltip", drawFork);
    for (const name of CHOICES) model.off("change:" + name, onChoice[name]);
    for (const name of STATUS) model.off("change:" + name, drawStatus);
    if (view) view.destroy();
    Object.values(urls).forEach((u) => URL.revokeObjectURL(u));
    if (afterUrl) URL.revokeObjectURL(afterUrl);
  };
}

export default { render: renderAttentionMaps };
