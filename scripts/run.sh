#!/usr/bin/env bash
# The main job (README): paper 1's whole pipeline on the built-in phantom at
# a CPU budget, into runs/s2s. Creates or refreshes .venv first (see
# scripts/env.sh). Extra flags go to launch.py, e.g. --workdir=runs/other.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ensure_venv
cd "$ROOT"
exec "$VENV/bin/python" launch.py --config=configs/synth2seg.py:quick \
  --workdir=runs/s2s --mode=pipeline "$@"
