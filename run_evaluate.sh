#!/usr/bin/env bash
# Evaluate DFPnet with the authors' settings (utils/recipe.py: val split, 384x384, the epoch-495
# snapshot, the Dog set's 8 classes). Each setting can be overridden from the environment; one left
# unset takes evaluate.py's default, the recipe's. E.g.
#   RESTORE_FROM=snapshots/best.pth DEVICE=cuda EXTRA_ARGS="--flip --amp bf16" ./run_evaluate.sh
# Settings: DATA_DIR DATASET RESTORE_FROM INPUT_SIZE LABELS (default: DATA_DIR/labels.json, else the
# checkpoint's own set, else dog) NUM_CLASSES (a check) BATCH_SIZE WORKERS DEVICE, AMP (empty:
# off, exact float32; bf16 where native is faster), SAVE_PATH (pictures; empty: none), METRICS_OUT and EXTRA_ARGS.
# Without a dataset at DATA_DIR it evaluates the synthetic demo (run ./run.sh first) instead.
set -euo pipefail
source "$(dirname "$0")/utils/env.sh"
cd "$(dirname "$0")"

DATA_DIR="${DATA_DIR:-$("$PYTHON" -m utils.recipe DATA_DIR)}"
DATASET="${DATASET:-$("$PYTHON" -m utils.recipe EVAL_SPLIT)}"
METRICS_OUT="${METRICS_OUT:-./outputs/eval/metrics.json}"
EXTRA_ARGS="${EXTRA_ARGS:-}"                         # e.g. "--flip --scales 0.75,1.0,1.25 --truncate-centers"

if [ ! -f "${DATA_DIR%/}/${DATASET}_id.txt" ]; then
  DEMO_DATA="$("$PYTHON" -m utils.recipe DEMO_DATA_DIR)"
  DEMO_SNAPSHOT=./snapshots/demo/best.pth
  echo "No dataset at ${DATA_DIR} (no ${DATASET}_id.txt there): evaluating the synthetic demo instead" \
       "(${DEMO_DATA}, ${DEMO_SNAPSHOT}, 128x128)."
  if [ ! -f "$DEMO_SNAPSHOT" ]; then
    echo "error: the demo snapshot ${DEMO_SNAPSHOT} does not exist: run ./run.sh first" >&2
    exit 1
  fi
  if [ ! -f "${DEMO_DATA}${DATASET}_id.txt" ]; then
    echo "Generating the synthetic dataset in ${DEMO_DATA}"
    "$PYTHON" -m dataset.synthetic --out "$DEMO_DATA" --train 96 --val 24 --trainTest 12 --seed 0
  fi
  DATA_DIR="$DEMO_DATA"
  RESTORE_FROM="$DEMO_SNAPSHOT"
  INPUT_SIZE=128,128
  SAVE_PATH=./outputs/eval_demo/
  METRICS_OUT=./outputs/eval_demo/metrics.json
fi

args=(--data-dir "$DATA_DIR" --dataset "$DATASET" --metrics-out "$METRICS_OUT")
for setting in RESTORE_FROM:--restore-from INPUT_SIZE:--input-size LABELS:--labels NUM_CLASSES:--num-classes \
               BATCH_SIZE:--batch-size WORKERS:--workers DEVICE:--device AMP:--amp SAVE_PATH:--save-path; do
  name="${setting%%:*}"
  if [ -n "${!name:-}" ]; then args+=("${setting#*:}" "${!name}"); fi
done
# shellcheck disable=SC2206  # EXTRA_ARGS is split into words on purpose
extra=($EXTRA_ARGS)
exec "$PYTHON" evaluate.py "${args[@]}" ${extra[@]+"${extra[@]}"}
