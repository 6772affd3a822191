#!/usr/bin/env bash
# Prune at several ratios, retrain each with the default retrain budget, and chart accuracy vs latency.
#   experiments/prune_sweep.sh <trained.ckpt> ["0.3 0.5 0.6 0.7"] [outputs/prune_sweep]
# Re-running skips retrains that already finished (their best.ckpt exists).
# Without retraining, a plain Hydra sweep gives the "right after pruning" points:
#   python -m gridface.prune -m model=<ckpt> prune=ratio prune.ratio=0.3,0.5,0.7
#   python -m gridface.pruning.collect outputs/prune/multiruns/<stamp>
set -euo pipefail
CKPT=${1:?usage: $0 <trained.ckpt> [ratios] [out dir]}
RATIOS=${2:-"0.3 0.5 0.6 0.7"}
OUT=${3:-outputs/prune_sweep}
PY=${PY:-.venv/bin/python}
export NO_ALBUMENTATIONS_UPDATE=1
for r in $RATIOS; do
  dir=$OUT/ratio_$r
  if [ ! -f "$dir/retrain/checkpoints/best.ckpt" ]; then
    $PY -m gridface.prune model="$CKPT" prune=ratio prune.ratio="$r" output_dir="$dir" evaluate=false latency.reps=0
    $PY -m gridface.train experiment=synthetic_cpu_retrain model="$dir/pruned.ckpt" logger=none \
        print_config=false hydra.run.dir="$dir/retrain"
  fi
  # the full report: AP before / right after pruning / after retraining, latency side by side
  $PY -m gridface.prune model="$CKPT" prune=ratio prune.ratio="$r" output_dir="$dir" \
      retrained="$dir/retrain/checkpoints/best.ckpt"
done
$PY -m gridface.pruning.collect "$OUT" --max-ap-drop 1.0
