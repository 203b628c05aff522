#!/usr/bin/env bash
# Train DFPnet with the authors' recipe (utils/recipe.py: 384x384 crops, batch 12, LR 1e-3, weight
# decay 5e-4, 500 epochs, the Dog set's 8 classes, from the ImageNet deep-stem ResNet-101). Each
# setting can be overridden from the environment; one left unset takes train.py's default, the
# recipe's. E.g.
#   BATCH_SIZE=8 NPROC=4 EXTRA_ARGS="--amp bf16 --workers 8" ./run.sh
#   DATA_DIR=./dataset/LIP/ LABELS=lip ./run.sh     # another dataset and label set (docs/labels.md)
# Settings: DATA_DIR INPUT_SIZE BATCH_SIZE LEARNING_RATE WEIGHT_DECAY EPOCHS LABELS (a preset or a
# labels.json; default: DATA_DIR/labels.json, else dog) NUM_CLASSES (a check) RESTORE_FROM
# SNAPSHOT_DIR, GPU (the authors' GPU list, e.g. 0 or 0,1), NPROC (processes on this machine; > 1
# starts torchrun, BATCH_SIZE is then per process; for several machines call torchrun yourself, see
# docs/training.md) and EXTRA_ARGS (more train.py flags). A killed run continues where it stopped:
# just run again. Without a dataset folder at DATA_DIR it trains a short demo on a generated
# synthetic set.
set -euo pipefail
cd "$(dirname "$0")"
source utils/env.sh

DATA_DIR="${DATA_DIR:-$("$PYTHON" -m utils.recipe DATA_DIR)}"
NPROC="${NPROC:-1}"
EXTRA_ARGS="${EXTRA_ARGS:-}"

# shellcheck disable=SC2206  # EXTRA_ARGS is split into words on purpose
extra=($EXTRA_ARGS)

if [ ! -d "$DATA_DIR" ]; then
  DEMO_DATA="$("$PYTHON" -m utils.recipe DEMO_DATA_DIR)"
  DEMO_SNAPSHOTS=./snapshots/demo
  # The demo's own settings fit its 5 minutes on any CPU; say which of the user's it does not take.
  ignored=()
  for name in INPUT_SIZE BATCH_SIZE LEARNING_RATE WEIGHT_DECAY EPOCHS LABELS NUM_CLASSES RESTORE_FROM \
              SNAPSHOT_DIR GPU; do
    if [ -n "${!name:-}" ]; then ignored+=("$name=${!name}"); fi
  done
  if [ "$NPROC" != 1 ]; then ignored+=("NPROC=$NPROC"); fi
  if [ ${#ignored[@]} -gt 0 ]; then
    echo "Note: the demo runs with settings of its own (one process, 128x128 crops, batch 4, ${DEMO_SNAPSHOTS})" \
         "and ignores ${ignored[*]}; EXTRA_ARGS and DEMO_MINUTES still apply."
  fi
  cat <<EOF
No dataset at ${DATA_DIR}.
  The Dog dataset (965 annotated cartoon dogs) and the ImageNet weights are shared by the DFPnet
  authors from the Google Drive folder linked in README.md: put the dataset in ${DATA_DIR}
  and resnet101-imagenet.pth in ./Trained_Models/, then run ./run.sh again.
Meanwhile: a demo on a synthetic set (${DEMO_DATA}), from scratch, 128x128 crops, into ${DEMO_SNAPSHOTS}
(${DEMO_MINUTES:-5} minutes of training, as many epochs as this CPU manages in them; run again after an
interruption to continue, delete ${DEMO_SNAPSHOTS} to start over).
EOF
  if [ ! -f "${DEMO_DATA}/val_id.txt" ]; then
    "$PYTHON" -m dataset.synthetic --out "$DEMO_DATA" --train 96 --val 24 --trainTest 12 --seed 0
  fi
  # --time-budget: as many epochs as this CPU trains in the demo's minutes (fixed after timing a
  # few steps; a resumed demo keeps that schedule).
  "$PYTHON" train.py --data-dir "$DEMO_DATA" --input-size 128,128 --batch-size 4 --learning-rate 1e-2 \
    --time-budget "${DEMO_MINUTES:-5}" --eval-every 5 --restore-from none --snapshot-dir "$DEMO_SNAPSHOTS" \
    --workers 0 --log-every 10 --image-every 60 --save-every 0 ${extra[@]+"${extra[@]}"}
  echo
  echo "Demo done. See it in TensorBoard:  .venv/bin/tensorboard --logdir ${DEMO_SNAPSHOTS#./}"
  echo "Evaluate its best.pth on the synthetic val split:  ./run_evaluate.sh"
  exit 0
fi

args=(--data-dir "$DATA_DIR")
for setting in INPUT_SIZE:--input-size BATCH_SIZE:--batch-size LEARNING_RATE:--learning-rate \
               WEIGHT_DECAY:--weight-decay EPOCHS:--epochs LABELS:--labels NUM_CLASSES:--num-classes \
               RESTORE_FROM:--restore-from SNAPSHOT_DIR:--snapshot-dir GPU:--gpu; do
  name="${setting%%:*}"
  if [ -n "${!name:-}" ]; then args+=("${setting#*:}" "${!name}"); fi
done

if [ "$NPROC" -gt 1 ]; then
  exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" train.py "${args[@]}" \
    ${extra[@]+"${extra[@]}"}
fi
exec "$PYTHON" train.py "${args[@]}" ${extra[@]+"${extra[@]}"}
