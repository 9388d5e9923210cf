// PromptSwap in the browser (after trace_view.js and lab_view.js, see diffexplain.widgets.lab_view):
// prompt A's final picture, A switched to B from step k, their difference, and a sweep over k. The swap
// step k slider shows A's x̂0 at k (what prompt B inherits) and, after a sweep, the sweep's final picture
// for the nearest k, from pictures sent once: no kernel. Run, Switch and Sweep run the model in Python.
function buildPromptSwap(lab) {
  const D = lab.data();
  if (!D.help) return [];
  const S = D.size || 128, n = D.steps || 1, sweep = D.sweep || { ks: [], from_a: [], from_b: [] };
  const a = lab.picture("prompt A all the way", "dx-a-image", S);
  const x0 = lab.picture("A's x̂0 at step k (what B inherits)", "dx-a-x0-image", S);
  const swap = lab.picture(D.swap_title || "<b>A, then B from step k</b>", "dx-swap-image", S);
  const diff = lab.picture("difference", "dx-diff-image", S);
  const swept = lab.picture("sweep: B from step k", "dx-swept-image", S);
  swept.box.hidden = !sweep.ks.length;
  const pictures = el("div", { class: "dx-row" });
  pictures.append(a.box, x0.box, swap.box, diff.box, swept.box);
  const label = el("div", { class: "dx-strip-label" });
  label.innerHTML = D.strip_label || "";
  const strip = el("div", { class: "dx-strip dx-sweep-strip" });
  const tiles = [];
  for (const k of sweep.ks.concat(sweep.ks.length ? ["A"] : [])) {
    const tile = lab.picture(k === "A" ? "A only" : "k=" + k, "dx-sweep-tile", 96);
    lab.show(tile.img, "sweep/" + k);
    if (k !== "A") tile.box.addEventListener("click", () => lab.set("step", k));
    tile.box.style.cursor = k === "A" ? "default" : "pointer";
    tiles.push([k, tile]);
    strip.append(tile.box);
  }
  const chart = lineChart([
    { name: D.series[0], x: sweep.ks, y: sweep.from_a, color: "#636efa", dots: true },
    { name: D.series[1], x: sweep.ks, y: sweep.from_b, color: "#ef553b", dots: true },
  ], { title: "how much the final picture differs, by swap step k", xLabel: "swap step k",
       yLabel: "mean |difference|", css: "dx-sweep-plot", xMax: Math.max(1, n - 1), intX: true, width: 520, height: 240 });
  lab.onChange(() => {
    const k = Math.max(0, Math.min(n - 1, lab.get("step") | 0));
    lab.show(a.img, "a"); lab.show(swap.img, "swap"); lab.show(diff.img, "diff");
    lab.show(x0.img, k + "/x0");
    x0.img.dataset.step = String(k);
    x0.title.textContent = "A's x̂0 at step " + k + " (what B inherits)";
    if (sweep.ks.length) { // the sweep's fork nearest to k
      const near = sweep.ks.reduce((b, s) => (Math.abs(s - k) < Math.abs(b - k) ? s : b), sweep.ks[0]);
      lab.show(swept.img, "sweep/" + near);
      swept.img.dataset.step = String(near);
      swept.title.textContent = "sweep: B from step " + near;
      tiles.forEach(([s, t]) => { t.box.style.outline = s === near ? "2px solid #e00" : "none"; });
      const i = sweep.ks.indexOf(near);
      chart.mark(near, sweep.from_a[i]);
    } else chart.mark(null);
  });
  return [
    lab.help(D.help),
    lab.row(lab.text("prompt_a", "prompt A", { css: "dx-prompt-a", width: "420px" }),
            lab.text("seed", "seed", { css: "dx-seed", width: "90px" }),
            lab.number("steps", "steps", { min: 1, max: 1000, css: "dx-steps" })),
    lab.row(lab.text("prompt_b", "prompt B", { css: "dx-prompt-b", width: "420px" }),
            lab.button("Run prompt A", "dx-run", "run"),
            lab.check("preview", "fast latent preview (no VAE)", { css: "dx-preview-toggle", disabled: !!D.preview_disabled })),
    lab.row(lab.range("step", "swap at k", { min: 0, max: n - 1, css: "dx-swap-step" }),
            lab.button("Switch to B from step k", "dx-swap-button", "swap"),
            lab.number("points", "sweep points", { min: 2, max: 50, css: "dx-sweep-points" }),
            lab.button("Sweep k", "dx-sweep-button", "sweep")),
    pictures, label, strip, chart.node,
  ];
}

function renderPromptSwap({ model, el: host }) {
  return mountLab(model, host, "dx-prompt-swap", buildPromptSwap);
}

export default { render: renderPromptSwap };
