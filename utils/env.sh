# Sourced by run.sh, run_evaluate.sh, tests/run.sh and .ci/run: makes sure ./.venv exists and holds
# what the command needs, then exports PYTHON. requirements.txt (the runtime) always; the files named
# in DFPNET_REQUIREMENTS too (tests/run.sh and .ci/run: requirements-dev.txt, which takes the runtime
# and requirements-deploy.txt). First use takes about a minute (torch CPU wheel, OpenCV, ..., and
# inplace-abn built from source); later uses only compare a stamp per file.
# Overrides: DFPNET_PYTHON (interpreter that creates the venv), DFPNET_SKIP_INPLACE_ABN=1.

_dfpnet_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_dfpnet_venv="$_dfpnet_root/.venv"
_dfpnet_stamp="$_dfpnet_venv/.dfpnet-stamp"
_dfpnet_want="$(cat "$_dfpnet_root/requirements.txt" "$_dfpnet_root/utils/env.sh" | sha256sum | cut -c1-16)"

if [ ! -x "$_dfpnet_venv/bin/python" ] || [ "$(cat "$_dfpnet_stamp" 2>/dev/null)" != "$_dfpnet_want" ]; then
  echo "[setup] preparing $_dfpnet_venv (first use: about a minute)" >&2
  _dfpnet_t0=$SECONDS
  if [ ! -x "$_dfpnet_venv/bin/python" ]; then
    "${DFPNET_PYTHON:-python3}" -m venv "$_dfpnet_venv" || { echo "[setup] error: could not create $_dfpnet_venv" >&2; return 1 2>/dev/null || exit 1; }
  fi
  "$_dfpnet_venv/bin/python" -m pip install -q --upgrade pip >&2 || true
  # torch first, from PyTorch's CPU wheel index: PyPI's torch is the CUDA build (several GB). Where an
  # NVIDIA driver answers (nvidia-smi), PyPI's build is the one wanted. DFPNET_TORCH_INDEX overrides
  # (an index URL; empty: PyPI). If the index cannot be reached, requirements.txt's pin installs
  # whatever build pip finds.
  _dfpnet_index="${DFPNET_TORCH_INDEX-$(command -v nvidia-smi >/dev/null 2>&1 || echo https://download.pytorch.org/whl/cpu)}"
  if [ -n "$_dfpnet_index" ]; then
    "$_dfpnet_venv/bin/python" -m pip install -q --retries 1 --index-url "$_dfpnet_index" \
      "$(grep -E '^torch==' "$_dfpnet_root/requirements.txt")" >&2 \
      || echo "[setup] WARNING: could not install torch from $_dfpnet_index; trying requirements.txt's pin" >&2
  fi
  if ! "$_dfpnet_venv/bin/python" -m pip install -q -r "$_dfpnet_root/requirements.txt" >&2; then
    echo "[setup] error: pip could not install requirements.txt into $_dfpnet_venv" >&2
    return 1 2>/dev/null || exit 1
  fi
  # inplace-abn has no wheels: build it against the torch just installed. Optional: without it
  # libs/ runs its pure-PyTorch backend (same numbers, no compiled kernels).
  if [ "${DFPNET_SKIP_INPLACE_ABN:-0}" != 1 ] && ! "$_dfpnet_venv/bin/python" -c "import inplace_abn" 2>/dev/null; then
    if ! SETUPTOOLS_SCM_PRETEND_VERSION=1.1.0 "$_dfpnet_venv/bin/python" -m pip install -q \
         --no-build-isolation --no-cache-dir inplace-abn==1.1.0 >"$_dfpnet_venv/inplace-abn-build.log" 2>&1; then
      echo "[setup] WARNING: inplace-abn did not build (see $_dfpnet_venv/inplace-abn-build.log);" \
           "continuing with the pure-PyTorch InPlace-ABN backend" >&2
    fi
  fi
  echo "$_dfpnet_want" > "$_dfpnet_stamp"
  echo "[setup] ready in $((SECONDS - _dfpnet_t0)) s" >&2
fi

# The command's other sets (deploy, dev), each with its stamp: a hash of every requirements file and
# this script, since one set may take another (-r).
for _dfpnet_set in ${DFPNET_REQUIREMENTS:-}; do
  _dfpnet_set_stamp="$_dfpnet_venv/.dfpnet-stamp-$_dfpnet_set"
  _dfpnet_set_want="$(cat "$_dfpnet_root"/requirements*.txt "$_dfpnet_root/utils/env.sh" | sha256sum | cut -c1-16)"
  if [ "$(cat "$_dfpnet_set_stamp" 2>/dev/null)" != "$_dfpnet_set_want" ]; then
    echo "[setup] installing $_dfpnet_set into $_dfpnet_venv" >&2
    if ! "$_dfpnet_venv/bin/python" -m pip install -q -r "$_dfpnet_root/$_dfpnet_set" >&2; then
      echo "[setup] error: pip could not install $_dfpnet_set into $_dfpnet_venv" >&2
      return 1 2>/dev/null || exit 1
    fi
    echo "$_dfpnet_set_want" > "$_dfpnet_set_stamp"
  fi
done

export PYTHON="$_dfpnet_venv/bin/python"
export PYTHONPATH="$_dfpnet_root${PYTHONPATH:+:$PYTHONPATH}"
