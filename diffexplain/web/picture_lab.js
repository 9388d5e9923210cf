// PictureLab in the browser (diffexplain.widgets.PictureLab): img2img, inpainting and DDIM inversion from a
// picture. The pictures come ONCE per change in `_frames` ("input", "start", "result", "rebuilt",
// "x0/<k>"); here, with no kernel: the x̂0 step slider swaps pictures, the strength slider moves the
// entry point on the schedule plot (`_schedule`: the levels of the N steps), the mask sliders move the
// red rectangle over the picture. Python hears those once they settle; Run, Invert, another picture
// (an upload's bytes as a binary buffer), the steps and the preview are messages to Python.

const PICTURE_CSS = `
.dx-picture-view .dx-input input { width: 7em; }
.dx-picture-view .dx-input.dx-prompt input { width: 28em; }
.dx-picture-view .dx-input.dx-picture-caption input { width: 20em; }
.dx-picture-view .dx-mask-slider input[type=range] { width: 110px; }
.dx-picture-view .dx-picture-frame { position: relative; line-height: 0; }
.dx-picture-view .dx-mask-rect { position: absolute; border: 2px solid #e00; box-sizing: border-box; pointer-events: none; }
.dx-picture-view .dx-plots { display: flex; flex-wrap: wrap; gap: 8px 20px; }
.dx-picture-view .dx-entry { font-size: 0.9em; }
`;
const BOX_NAMES = ["x0", "y0", "x1", "y1"];

function renderPictureLab({ model, el: host }) {
  const root = el("div", { class: "dx-widget dx-view dx-picture-view" });
  root.setAttribute("data-lm-suppress-shortcuts", "true");
  host.append(el("style", {}, PICTURE_CSS), root);
  addStyle(root); // once attached (a shadow root in marimo)
  const timers = {};
  const later = (name, fn) => { clearTimeout(timers[name]); timers[name] = setTimeout(fn, STEP_SYNC_MS); };
  const I0 = model.get("_inputs") || {};

  // ---- the controls: built once, kept while Python sends new pictures ----
  const help = el("div", { class: "dx-help" });
  const source = el("select", { "aria-label": "picture" });
  const sourceBox = el("label", { class: "dx-input dx-picture-source" }, "picture ");
  sourceBox.append(source);
  const [captionBox, caption] = inputBox("scene", "dx-picture-caption", I0.caption);
  const [seedBox, seed] = inputBox("scene seed", "dx-seed", I0.seed);
  const upload = el("input", { type: "file", accept: "image/*", "aria-label": "upload a picture" });
  const uploadBox = el("label", { class: "dx-input dx-picture-upload" }, "upload ");
  uploadBox.append(upload);
  const strengthBox = el("div", { class: "dx-step-slider dx-strength" });
  const strength = el("input", { type: "range", min: "0.05", max: "1", step: "0.05", "aria-label": "strength" });
  const strengthOut = el("output", { class: "widget-readout" });
  const sLabel = el("label", {}, "strength ");
  sLabel.append(strength);
  strengthBox.append(sLabel, strengthOut);
  const [stepsBox, steps] = inputBox("steps", "dx-steps", I0.steps, { inputmode: "numeric" });
  const entry = el("span", { class: "dx-entry" });
  const maskLabel = el("label", { class: "dx-use-mask" });
  const useMask = el("input", { type: "checkbox" });
  maskLabel.append(useMask, " inpaint inside the rectangle");
  const boxSliders = {};
  for (const name of BOX_NAMES) {
    const s = el("input", { type: "range", min: "0", step: "1", "aria-label": name });
    const out = el("output", { class: "widget-readout" });
    const lab = el("label", { class: "dx-mask-slider dx-mask-" + name }, name + " ");
    lab.append(s, out);
    s.addEventListener("keydown", (ev) => ev.stopPropagation());
    boxSliders[name] = { s, out, lab };
  }
  const [promptBox, prompt] = inputBox("prompt", "dx-prompt", I0.prompt);
  const previewLabel = el("label", { class: "dx-preview-toggle" });
  const preview = el("input", { type: "checkbox" });
  previewLabel.append(preview, " fast latent preview (no VAE)");
  const run = el("button", { type: "button", class: "dx-run dx-action" }, "Run from the picture");
  const invert = el("button", { type: "button", class: "dx-invert dx-action", title: "DDIM inversion, then reconstruction" }, "Invert");
  const row = (...kids) => { const r = el("div", { class: "dx-controls" }); r.append(...kids); return r; };
  const panelsRow = el("div", { class: "dx-row" });
  const stepHost = el("div");
  const plots = el("div", { class: "dx-plots" });
  const scheduleBox = el("div", { class: "dx-schedule-plot" });
  const errorBox = el("div", { class: "dx-inversion-plot" });
  plots.append(scheduleBox, errorBox);
  root.append(help, row(sourceBox, captionBox, seedBox, uploadBox), row(strengthBox, stepsBox, entry),
              row(maskLabel, ...BOX_NAMES.map((n) => boxSliders[n].lab)), row(promptBox, previewLabel),
              row(run, invert), panelsRow, stepHost, plots);
  const shell = actionShell(model, root);

  const boxValues = () => Object.fromEntries(BOX_NAMES.map((n) => [n, Number(boxSliders[n].s.value)]));
  const settings = () => ({
    prompt: prompt.value, strength: Number(strength.value), steps: steps.value,
    use_mask: useMask.checked, box: boxValues(),
  });
  const pictureSettings = () => ({ source: source.value, caption: caption.value, seed: seed.value });
  source.addEventListener("change", () => model.send({ action: "picture", ...pictureSettings() }));
  caption.addEventListener("change", () => model.send({ action: "picture", ...pictureSettings() }));
  seed.addEventListener("change", () => model.send({ action: "picture", ...pictureSettings() }));
  upload.addEventListener("change", async () => {
    const f = upload.files && upload.files[0];
    if (f) model.send({ action: "upload", name: f.name }, undefined, [await f.arrayBuffer()]);
  });
  strength.addEventListener("keydown", (ev) => ev.stopPropagation());
  strength.addEventListener("input", () => {
    drawSchedule();
    later("strength", () => model.send({ action: "set", strength: Number(strength.value) }));
  });
  steps.addEventListener("change", () => model.send({ action: "set", steps: steps.value }));
  const maskMoved = () => {
    drawMask();
    later("mask", () => model.send({ action: "set", use_mask: useMask.checked, box: boxValues() }));
  };
  useMask.addEventListener("change", maskMoved);
  for (const name of BOX_NAMES) boxSliders[name].s.addEventListener("input", maskMoved);
  preview.addEventListener("change", () => model.send({ action: "preview", value: preview.checked }));
  run.addEventListener("click", () => model.send({ action: "run", ...settings() }));
  invert.addEventListener("click", () => model.send({ action: "invert", ...settings() }));

  function applyInputs() { // Python's values (the focused box keeps what is being typed)
    const I = model.get("_inputs") || {};
    const D = model.get("_view") || {};
    const put = (input, value) => { if (document.activeElement !== input && value !== undefined) input.value = String(value); };
    if (source.options.length !== (D.sources || []).length)
      source.replaceChildren(...(D.sources || []).map((s) => el("option", { value: s }, s)));
    put(source, I.source); put(caption, I.caption); put(seed, I.seed); put(steps, I.steps); put(prompt, I.prompt);
    put(strength, I.strength);
    strengthOut.textContent = Number(strength.value).toFixed(2);
    useMask.checked = !!I.use_mask;
    preview.checked = !!I.preview; preview.disabled = !!I.preview_disabled;
    const [ph, pw] = D.picture_size || [64, 64];
    for (const name of BOX_NAMES) {
      const s = boxSliders[name].s;
      s.max = String(name[0] === "x" ? pw : ph);
      if (I.box) put(s, I.box[name]);
      boxSliders[name].out.textContent = s.value;
    }
    drawMask();
    drawSchedule();
  }

  // ---- the schedule plot and the entry line: computed here as the strength slider moves ----
  function drawSchedule() {
    const L = model.get("_schedule") || {};
    const n = L.steps || 0, s = Number(strength.value);
    strengthOut.textContent = s.toFixed(2);
    scheduleBox.replaceChildren();
    if (!n) return;
    const k = n - Math.min(Math.floor(n * s + 1e-9), n); // t_start = N − ⌊N·s⌋ (picture_parts.entry_step)
    const idx = [...Array(n).keys()];
    linePlot(scheduleBox, {
      title: "where the loop enters", x: "inference step", y: L.name, width: 420, height: 260,
      series: [
        { name: "skipped", colour: "#bbb", xs: idx.slice(0, k + 1), ys: L.values.slice(0, k + 1) },
        { name: "runs", colour: "#1f77b4", xs: idx.slice(k), ys: L.values.slice(k) },
        { name: "entry", colour: "#d62728", xs: k < n ? [k] : [], ys: k < n ? [L.values[k]] : [], lines: false, size: 6 },
      ],
    });
    entry.innerHTML = n - k === 0
      ? "<span style='color:#b00'>⌊N·s⌋ = 0: no step runs; raise strength</span>"
      : `enters at step <b>${k}</b> of ${n} (t = ${g(L.timesteps[k])}, ${L.name} = ${fmt(L.values[k], 3)}); ${n - k} steps run`;
  }

  // ---- the mask rectangle over the picture ----
  let rect = null, frameSize = 128;
  function drawMask() {
    for (const name of BOX_NAMES) boxSliders[name].out.textContent = boxSliders[name].s.value;
    if (!rect) return;
    const [ph, pw] = (model.get("_view") || {}).picture_size || [64, 64];
    const b = boxValues();
    rect.hidden = !useMask.checked || b.x1 <= b.x0 || b.y1 <= b.y0;
    Object.assign(rect.style, {
      left: (b.x0 * frameSize) / pw + "px", top: (b.y0 * frameSize) / ph + "px",
      width: ((b.x1 - b.x0) * frameSize) / pw + "px", height: ((b.y1 - b.y0) * frameSize) / ph + "px",
    });
  }

  // ---- the pictures: drawn again when Python sends new ones ----
  let pics = null, setStep = () => {};
  function rebuild() {
    if (pics) pics.revoke();
    pics = warmUrls(model);
    const D = model.get("_view") || {};
    help.innerHTML = D.help || "";
    const S = D.display_size || 128;
    frameSize = S;
    const panels = {};
    for (const key of Object.keys(D.panels || {})) panels[key] = picturePanel(D.panels[key], D.css[key], S);
    const frame = el("div", { class: "dx-picture-frame" });
    rect = el("div", { class: "dx-mask-rect" });
    panels.input.img.replaceWith(frame);
    frame.append(panels.input.img, rect);
    panelsRow.replaceChildren(...Object.values(panels).map((p) => p.box));
    for (const key of ["input", "start", "result", "rebuilt"]) panels[key].show(pics.urls[key]);
    const n = D.n || 0;
    const slider = stepSlider("x̂0 step", "dx-picture-step", n - 1, Math.min(model.get("shown_step"), Math.max(n - 1, 0)), (k) => {
      show(k);
      later("step", () => { model.set("shown_step", k); model.save_changes(); });
    });
    slider.box.hidden = n === 0;
    stepHost.replaceChildren(slider.box);
    function show(k) {
      k = Math.max(0, Math.min(n - 1, k | 0));
      slider.set(k);
      panels.x0.show(pics.urls["x0/" + k]);
      panels.x0.img.dataset.step = String(k);
      panels.x0.title.textContent = "x̂0 at step " + (D.entry + k) + " of " + D.total;
    }
    setStep = (k) => { if (n) show(k); };
    setStep(model.get("shown_step"));
    errorBox.replaceChildren();
    const E = D.errors || [];
    linePlot(errorBox, {
      title: "reconstruction error per step", x: "reconstruction step", y: "‖x − x_inv‖ / ‖x_inv‖", width: 420, height: 260,
      series: [{ name: "e_i", colour: "#2ca02c", xs: E.map((_, i) => i), ys: E }],
    });
    applyInputs();
    shell.draw();
  }
  const onStep = () => setStep(model.get("shown_step"));
  model.on("change:_version", rebuild);
  model.on("change:_inputs", applyInputs);
  model.on("change:_schedule", drawSchedule);
  model.on("change:shown_step", onStep);
  rebuild();
  return () => {
    Object.values(timers).forEach(clearTimeout);
    model.off("change:_version", rebuild);
    model.off("change:_inputs", applyInputs);
    model.off("change:_schedule", drawSchedule);
    model.off("change:shown_step", onStep);
    shell.destroy();
    if (pics) pics.revoke();
  };
}

export default { render: renderPictureLab };
