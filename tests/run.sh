#!/usr/bin/env bash
# The README's test command: sets up ./.venv on first use, then runs the whole suite on the CPU,
# spread over the cores by pytest-xdist (one worker per core, up to 4, each with one torch thread;
# DFPNET_TEST_WORKERS=0 runs it in one process). Extra arguments go to pytest
# (e.g. `bash tests/run.sh -m "not slow"`, `bash tests/run.sh tests/test_loss.py`).
set -euo pipefail
cd "$(dirname "$0")/.."
DFPNET_REQUIREMENTS=requirements-dev.txt source utils/env.sh
workers="${DFPNET_TEST_WORKERS:-$(nproc 2>/dev/null || echo 1)}"
if ! [[ "$workers" =~ ^[0-9]+$ ]]; then
  echo "tests/run.sh: error: DFPNET_TEST_WORKERS must be a whole number, got '$workers'" >&2
  exit 2
fi
((workers > 4)) && workers=4
xdist=()
# Workers pay off for the whole suite, not for a file or two; an explicit -n wins.
if ((workers > 1)) && [[ " $* " != *" -n "* && " $* " != *"--numprocesses"* && " $* " != *" -p no:xdist "* ]] \
   && [[ " $* " != *"tests/"* ]]; then
  # One file per worker at a time: a module's shared fixtures (a trained run, two ONNX exports)
  # are then made once, not once per worker.
  xdist=(-n "$workers" --dist loadfile)
fi
# pytest's folders (full-size checkpoints, exports) take up to about 3.6 GB at once with 2 workers
# and are removed as tests pass; warn up front rather than fail halfway with "No space left".
tmp="${TMPDIR:-/tmp}"
free_kb="$(df -Pk "$tmp" 2>/dev/null | awk 'NR == 2 {print $4}')"
if [[ "$free_kb" =~ ^[0-9]+$ ]] && ((free_kb < 4 * 1024 * 1024)); then
  echo "tests/run.sh: warning: $tmp has $((free_kb / 1024)) MB free; the suite took up to about" \
       "3.6 GB there with 2 workers (free some, or point TMPDIR at a roomier disk)" >&2
fi
exec "$PYTHON" -m pytest "${xdist[@]}" "$@"
