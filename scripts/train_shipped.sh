#!/usr/bin/env bash
# Train the shipped default model's recipe from scratch: five `diffexplain train` stages, each starting
# from the model the one before wrote (docs/model-card.md, "Training"). About 4.5 hours on 2 CPU cores.
#
#   bash scripts/train_shipped.sh [OUT]        # default OUT: runs/shipped
#
# Every stage resumes: run the script again after an interruption and finished stages are skipped
# (their model folder exists), the interrupted one continues from its last checkpoint.
# Extra arguments after OUT go to every stage (for example --device cuda).
set -euo pipefail
out=${1:-runs/shipped}
shift || true

# stage PRESET [ARGS...]: train PRESET into $out/PRESET unless its model folder is already there.
stage() {
  local preset=$1
  shift
  if [ -f "$out/$preset/model/model.json" ]; then
    echo "== $preset: done ($out/$preset/model)"
    return
  fi
  echo "== $preset -> $out/$preset"
  diffexplain train --preset "$preset" --out "$out/$preset" "$@"
}

stage default "$@"                                          # stages 1-3: VAE, decoder, U-Net
stage refine --unet-init "$out/default/model" "$@"          # stage 4: the noisiest steps weigh more
stage bind --unet-init "$out/refine/model" "$@"             # stage 5: cross-attention loss, weight 1
stage settle --unet-init "$out/bind/model" "$@"             # stage 6: the same at weight 0.1
stage pairs --unet-init "$out/settle/model" "$@"            # stage 7: three quarters two-object scenes
echo "== the model: $out/pairs/model (use it with DIFFEXPLAIN_MODEL=$out/pairs/model)"
