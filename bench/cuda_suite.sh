#!/usr/bin/env bash
# Every CUDA figure of bench/RESULTS.md in one go, for a short lease of a GPU machine:
#
#   bash bench/cuda_suite.sh [OUTDIR]          (default outputs/bench/cuda; $OUT when set)
#
# 1. training step, batch 12, 384x384: default vs the authors' way (+ single-change configs);
# 2. bf16 vs float32 training run on the synthetic set (the run.sh demo recipe, same seed),
#    then evaluation speed and bf16-vs-float32 mean IU on the float32 run's best checkpoint;
# 3. the out-of-memory message of train.py;
# 4. the compiled inplace-abn package on CUDA (built here when .whl/ carries its sdist)
#    against the pure backend, and its training step;
# 5. torch.compile's training step, if time allows.
# Each step writes its log (and JSON) to OUTDIR and a failing step does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-outputs/bench/cuda}}
mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
WORK=${TMPDIR:-/tmp}/dfpnet_cuda_suite
mkdir -p "$WORK"

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to OUTDIR/NAME.log, report the exit status
  local name=$1 limit=$2
  shift 2
  echo "=== $name ($(date -u +%H:%M:%S))"
  timeout "$limit" "$@" >"$OUTDIR/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUTDIR/$name.log"
  echo "=== $name: exit $rc"
}

# Packages a bare GPU image lacks (tensorboard, setuptools_scm), carried as wheels in .whl/.
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
    .whl/*.whl && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi -L
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

# The compiled package builds in the background (CPU cores) while the GPU runs steps 1-3.
build_pid=
if compgen -G ".whl/inplace-abn-*.tar.gz" >/dev/null && ! "$PY" -c "import inplace_abn" 2>/dev/null; then
  (SETUPTOOLS_SCM_PRETEND_VERSION=1.1.0 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=8 \
     "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$WORK/abn" \
     .whl/inplace-abn-*.tar.gz >"$OUTDIR/abn_build.log" 2>&1) &
  build_pid=$!
fi

# 1. The training step. The default's bf16 runs the pure InPlace-ABN whichever package is there.
step train_step 240 "$PY" -m bench.train_step --device cuda --batch-size 12 --input-size 384,384 \
  --iters 10 --warmup 3 --configs default,baseline,bf16-cl --json "$OUTDIR/train_step_cuda_b12.json"

# 2. bf16 vs float32 training (the run.sh demo recipe on the GPU), then evaluation.
DATA=$WORK/synthetic
[ -f "$DATA/val_id.txt" ] || "$PY" -m dataset.synthetic --out "$DATA" --train 96 --val 24 --trainTest 12 --seed 0 >/dev/null
for amp in off bf16; do
  step "train_amp_$amp" 150 "$PY" train.py --device cuda --amp "$amp" --data-dir "$DATA" --input-size 128,128 \
    --batch-size 8 --learning-rate 1e-2 --epochs 30 --eval-every 5 --restore-from none --resume none \
    --snapshot-dir "$WORK/snap_$amp" --workers 4 --log-every 10 --save-every 0
done
step evaluate 120 "$PY" -m bench.evaluate --device cuda --compare-amp --channels-last --input-size 384,384 \
  --batch-size 12 --workers 4 --data-dir "$DATA" --restore-from "$WORK/snap_off/best.pth" \
  --json "$OUTDIR/evaluate_cuda.json"

# 3. Out of memory: a clear one-line hint and exit status 1.
step oom 90 "$PY" train.py --device cuda --amp off --data-dir "$DATA" --input-size 640,640 --batch-size 96 \
  --epochs 1 --restore-from none --resume none --snapshot-dir "$WORK/snap_oom" --workers 0

# 4. The compiled package on CUDA.
if [ -n "$build_pid" ]; then
  wait "$build_pid"
  echo "inplace-abn build exit $? ($(tail -n 3 "$OUTDIR/abn_build.log" | tr '\n' ' '))"
  export PYTHONPATH="$WORK/abn:$PYTHONPATH"
fi
step pytest_cuda 150 "$PY" -m pytest -q -rs tests/test_inplace_abn.py -k cuda
step train_step_compiled_abn 180 "$PY" -m bench.train_step --device cuda --batch-size 12 --input-size 384,384 \
  --iters 10 --warmup 3 --configs iabn-fp32,baseline --no-flops --json "$OUTDIR/train_step_cuda_iabn.json"

# 5. torch.compile (minutes to compile: cut at 150 s).
step train_step_torch_compile 150 "$PY" -m bench.train_step --device cuda --batch-size 12 --input-size 384,384 \
  --iters 10 --warmup 3 --configs compiled,default --no-flops --no-memory --json "$OUTDIR/train_step_cuda_compiled.json"
echo "done $(date -u +%H:%M:%S)"
