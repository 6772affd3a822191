#!/usr/bin/env bash
# Boxes and scores of the default checkpoint on the 19 mini_val images, before (main's code: TAO's aggregate
# coverage, no threshold) and after (this branch: confidence in [0, 1] and the model's own threshold).
# Usage, from the worktree root: bash experiments/scores_2026-12-04/run.sh <best.ckpt> <main checkout> <scratch>
set -euo pipefail
CK=$1; MAIN=$2; T=$3; HERE=$(pwd)
M=/work/shared/data/widerface/mini_val
PY=$MAIN/.venv/bin/python
DATA="dataset=widerface dataset.val.gt_file=$M/wider_face_val_bbx_gt.txt dataset.val.image_dir=$M/images"
export NO_ALBUMENTATIONS_UPDATE=1
mkdir -p "$T"
# the threshold this branch's training records, for the weights of a checkpoint trained before it did
PYTHONPATH=src $PY experiments/scores_2026-12-04/threshold.py "$CK" "$T/best_threshold.ckpt" > "$T/threshold.json"
(cd "$MAIN" && $PY -m gridface.evaluate model="$CK" $DATA plots=false hydra.run.dir="$T/eval_before")
(cd "$MAIN" && $PY -m gridface.infer model="$CK" source=$M/images save_images=false hydra.run.dir="$T/infer_before")
PYTHONPATH=src $PY -m gridface.evaluate model="$T/best_threshold.ckpt" $DATA plots=false hydra.run.dir="$T/eval_after"
PYTHONPATH=src $PY -m gridface.evaluate model="$T/best_threshold.ckpt" $DATA plots=false postprocess.score=aggregate \
    hydra.run.dir="$T/eval_after_aggregate"
PYTHONPATH=src $PY -m gridface.infer model="$T/best_threshold.ckpt" source=$M/images save_images=false \
    hydra.run.dir="$T/infer_after"
$PY experiments/scores_2026-12-04/table.py "$T" $M > experiments/scores_2026-12-04/table.md
cd "$HERE"
# the checkpoint's own (synthetic) validation split: the ranking score's effect on AP50 where the model is good
CK_T="$T/best_threshold.ckpt"
PYTHONPATH=src $PY -m gridface.evaluate model="$CK_T" plots=false hydra.run.dir="$T/val_confidence"
PYTHONPATH=src $PY -m gridface.evaluate model="$CK_T" plots=false postprocess.score=aggregate hydra.run.dir="$T/val_aggregate"
$PY experiments/scores_2026-12-04/table.py "$T" $M > experiments/scores_2026-12-04/table.md
