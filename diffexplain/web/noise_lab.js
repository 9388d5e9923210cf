// NoiseLab in the browser (after trace_view.js and lab_view.js, see diffexplain.widgets.lab_view):
// the starting noise, the original run, the branch forked with added noise and their difference.
// The step k slider shows x_k of the original from pictures sent once per run, and the rectangle is
// drawn over it here: scrubbing k and moving the rectangle need no kernel. Run and "Add noise at step k
// and fork" run the model in Python (busy state, Stop, errors).
function buildNoiseLab(lab) {
  const D = lab.data();
  if (!D.help) return [];
  const S = D.size || 128, n = D.steps || 1;
  const sources = (D.sources || ["seed"]).map((s) => [s, s]);
  const pics = {};
  for (const [key, title, css] of [["init", "starting noise x_T", "dx-init-image"],
                                   ["xk", "x_k of the original, and the region", "dx-xk-image"],
                                   ["original", "original", "dx-original-image"],
                                   ["branch", D.branch_title || "<b>new branch</b>", "dx-branch-image"],
                                   ["diff", "difference", "dx-diff-image"]]) pics[key] = lab.picture(title, css, S);
  const rect = el("div", { class: "dx-rect" });
  pics.xk.frame.append(rect);
  const pictures = el("div", { class: "dx-row" });
  pictures.append(...Object.values(pics).map((p) => p.box));
  lab.onChange(() => {
    const k = Math.max(0, Math.min(n - 1, lab.get("step") | 0));
    for (const key of ["init", "original", "branch", "diff"]) lab.show(pics[key].img, key);
    lab.show(pics.xk.img, k + "/xk");
    pics.xk.img.dataset.step = String(k);
    const on = !!lab.get("use_rect"), rows = lab.get("rows") || [0, 100], cols = lab.get("cols") || [0, 100];
    rect.hidden = !on;
    Object.assign(rect.style, { top: rows[0] + "%", height: rows[1] - rows[0] + "%",
                                left: cols[0] + "%", width: cols[1] - cols[0] + "%" });
  });
  return [
    lab.help(D.help),
    lab.row(lab.text("prompt", "prompt", { css: "dx-prompt", width: "420px" }),
            lab.number("steps", "steps", { min: 1, max: 1000, css: "dx-steps" }),
            lab.check("preview", "fast latent preview (no VAE)", { css: "dx-preview-toggle", disabled: !!D.preview_disabled })),
    lab.row(lab.select("source", "start from", sources, { css: "dx-noise-source" }),
            lab.text("seed", "seed", { css: "dx-seed", width: "90px" }),
            lab.number("dataset_index", "dataset #", { min: 0, max: 99999 }),
            lab.upload("image", "dx-noise-upload"),
            lab.button("Run from this start", "dx-run", "run")),
    lab.row(lab.range("step", "step k", { min: 0, max: n - 1, css: "dx-inject-step" }),
            lab.range("strength", "strength", { min: 0, max: 4, step: 0.1, css: "dx-noise-strength" }),
            lab.text("noise_seed", "noise seed", { css: "dx-noise-seed", width: "90px" })),
    lab.row(lab.check("use_rect", "only inside the rectangle", { css: "dx-use-rect" }),
            lab.pair("rows", "rows %", { css: "dx-rect-rows" }),
            lab.pair("cols", "columns %", { css: "dx-rect-cols" }),
            lab.button("Add noise at step k and fork", "dx-inject-button", "inject")),
    pictures,
  ];
}

function renderNoiseLab({ model, el: host }) {
  return mountLab(model, host, "dx-noise-lab", buildNoiseLab);
}

export default { render: renderNoiseLab };
