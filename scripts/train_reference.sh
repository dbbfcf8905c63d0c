#!/usr/bin/env bash
# Train the committed reference model on FER2013Train only and export it to models/reference/.
#
#   scripts/train_reference.sh            # full run (about 1.5 h on 2 quiet Xeon cores, bf16/AMX)
#   scripts/train_reference.sh --resume   # continue after an interruption (same run dir)
#
# Model selection and early stopping use a stratified 10 % tuning split carved from Train;
# FER2013Valid (the canonical `valid` split) is the test set and is only scored at the end.
# Every option below equals the TrainConfig default; they are spelled out to document the recipe.
set -euo pipefail
cd "$(dirname "$0")/.."

DATASET=${DATASET:-artifacts/canonical}
if [[ ! -f "$DATASET/dataset.json" ]]; then
  echo "no canonical dataset at $DATASET; run: .venv/bin/ferflow data ingest" >&2
  exit 2
fi

start=$(date +%s)
.venv/bin/ferflow train \
  --dataset "$DATASET" \
  --model ran_fm --width 40 --depths 2,2,2,2 --head-stages 1 --dropout 0.2 \
  --scheme probability --epochs 45 --batch-size 64 \
  --optimizer adamw --lr 0.001 --weight-decay 0.05 --schedule cosine \
  --erase-prob 0.25 --rotation 10 --mixup 0 --label-smoothing 0 --rb-margin 0.02 \
  --class-weight-power 0.25 --patience 10 --tune-fraction 0.1 --seed 42 \
  --precision auto --quantize --tta hflip \
  --run-dir artifacts/train/reference \
  --export-dir models/reference \
  --experiment ferflow-reference \
  "$@"
echo "wall time: $(( ($(date +%s) - start) / 60 )) min (training time alone is in models/reference/metrics.json)"
