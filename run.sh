#!/usr/bin/env bash
# Train DFPnet with the authors' settings: 384x384 crops, batch 12, LR 1e-3, weight decay 5e-4,
# 500 epochs, 8 classes, from the ImageNet deep-stem ResNet-101. Every setting can be overridden
# from the environment, e.g.
#   BATCH_SIZE=8 NPROC=4 EXTRA_ARGS="--amp bf16 --workers 8" ./run.sh
# NPROC > 1 starts torchrun on this machine (BATCH_SIZE is per process); for several machines
# call torchrun yourself (see README). A killed run continues where it stopped: just run again.
# Without a dataset folder at DATA_DIR it trains a short demo on a generated synthetic set.
set -euo pipefail
cd "$(dirname "$0")"
source utils/env.sh

DATA_DIR="${DATA_DIR:-./dataset/Cartoon_sketches/Dog/}"
INPUT_SIZE="${INPUT_SIZE:-384,384}"
BATCH_SIZE="${BATCH_SIZE:-12}"
LEARNING_RATE="${LEARNING_RATE:-1e-3}"
WEIGHT_DECAY="${WEIGHT_DECAY:-5e-4}"
EPOCHS="${EPOCHS:-500}"
NUM_CLASSES="${NUM_CLASSES:-8}"
RESTORE_FROM="${RESTORE_FROM:-./Trained_Models/resnet101-imagenet.pth}"
SNAPSHOT_DIR="${SNAPSHOT_DIR:-./snapshots}"
GPU="${GPU:-}"                 # authors' GPU list, e.g. 0 or 0,1 (CUDA_VISIBLE_DEVICES); empty: all
NPROC="${NPROC:-1}"            # processes (GPUs) on this machine; > 1 uses torchrun
EXTRA_ARGS="${EXTRA_ARGS:-}"   # more train.py flags, e.g. "--amp fp16 --eval-every 10"

# shellcheck disable=SC2206  # EXTRA_ARGS is split into words on purpose
extra=($EXTRA_ARGS)

if [ ! -d "$DATA_DIR" ]; then
  DEMO_DATA=./dataset/synthetic
  DEMO_SNAPSHOTS=./snapshots/demo
  cat <<EOF
No dataset at ${DATA_DIR}.
  The Dog dataset (965 annotated cartoon dogs) and the ImageNet weights are shared by the DFPnet
  authors from the Google Drive folder linked in README.md: put the dataset in ${DATA_DIR}
  and resnet101-imagenet.pth in ./Trained_Models/, then run ./run.sh again.
Meanwhile: a demo on a synthetic set (${DEMO_DATA}), from scratch, 128x128 crops, into ${DEMO_SNAPSHOTS}
(about 5 minutes on 2 CPU cores; run again after an interruption to continue, delete ${DEMO_SNAPSHOTS} to start over).
EOF
  if [ ! -f "${DEMO_DATA}/val_id.txt" ]; then
    "$PYTHON" -m dataset.synthetic --out "$DEMO_DATA" --train 96 --val 24 --trainTest 12 --seed 0
  fi
  "$PYTHON" train.py --data-dir "$DEMO_DATA" --input-size 128,128 --batch-size 8 --learning-rate 1e-2 \
    --epochs 30 --eval-every 5 --restore-from none --snapshot-dir "$DEMO_SNAPSHOTS" --workers 0 \
    --log-every 10 --image-every 60 --save-every 0 ${extra[@]+"${extra[@]}"}
  echo
  echo "Demo done. See it in TensorBoard:  .venv/bin/tensorboard --logdir ${DEMO_SNAPSHOTS#./}"
  echo "Evaluate its best.pth on the synthetic val split:  ./run_evaluate.sh"
  exit 0
fi

args=(--data-dir "$DATA_DIR" --input-size "$INPUT_SIZE" --batch-size "$BATCH_SIZE"
      --learning-rate "$LEARNING_RATE" --weight-decay "$WEIGHT_DECAY" --epochs "$EPOCHS"
      --num-classes "$NUM_CLASSES" --restore-from "$RESTORE_FROM" --snapshot-dir "$SNAPSHOT_DIR")
if [ -n "$GPU" ]; then args+=(--gpu "$GPU"); fi

if [ "$NPROC" -gt 1 ]; then
  exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" train.py "${args[@]}" \
    ${extra[@]+"${extra[@]}"}
fi
exec "$PYTHON" train.py "${args[@]}" ${extra[@]+"${extra[@]}"}
