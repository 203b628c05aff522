#!/usr/bin/env bash
# The README's test command: sets up ./.venv on first use, then runs the whole suite on the CPU.
# Extra arguments go to pytest (e.g. `bash tests/run.sh -m "not slow"`).
set -euo pipefail
cd "$(dirname "$0")/.."
source utils/env.sh
exec "$PYTHON" -m pytest "$@"
