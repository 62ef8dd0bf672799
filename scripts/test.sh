#!/usr/bin/env bash
# The tests (README; .ci/run calls this): creates or refreshes .venv first
# (see scripts/env.sh), then `pytest -n 2 tests`. Arguments replace
# `-n 2 tests`, e.g. scripts/test.sh -q tests/test_predict.py
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ensure_venv
cd "$ROOT"
if [ "$#" -eq 0 ]; then
  set -- -n 2 tests
fi
exec "$VENV/bin/python" -m pytest "$@"
