# Sourced by scripts/run.sh and scripts/test.sh: the project's virtual
# environment, created from requirements.txt when it is missing and
# refreshed when requirements.txt has changed since it was last installed
# (a SHA-256 stamp inside the environment), so that a fresh clone needs
# nothing but Python 3.11+.
#
#   PYTHON=python3.12 scripts/test.sh    # the interpreter that creates it
#   MRSEG_VENV=/elsewhere scripts/run.sh # another location (default .venv)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MRSEG_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

ensure_venv() {
  local stamp="$VENV/.requirements.sha256" want
  want="$("$PYTHON" -c 'import hashlib, sys
print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' \
    "$ROOT/requirements.txt")"
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "mrseg needs Python 3.11 or newer; $PYTHON is $("$PYTHON" -V 2>&1)." \
        "Set PYTHON=python3.11 (or newer)." >&2
      return 1
    fi
    echo "Creating $VENV from requirements.txt (once; a few minutes)..." >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      --upgrade pip
  elif [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  else
    echo "requirements.txt changed: refreshing $VENV..." >&2
  fi
  # The stamp is written only after a complete install, so an interrupted
  # one is redone next time.
  rm -f "$stamp"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$ROOT/requirements.txt"
  echo "$want" > "$stamp"
}
