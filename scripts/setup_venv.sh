#!/usr/bin/env bash
# Creates .venv inside the checkout and installs lmcor with its pinned dependency set.
# Re-running is cheap: the install is skipped while setup.py and constraints.txt are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.lmcor-install-stamp
want=$(cat setup.py constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade "pip==25.3"
  # torch==2.13.0 resolves to the CPU build; an unpinned torch would pull CUDA wheels.
  # --no-compile: byte-compiling every wheel up front costs minutes; imports compile lazily.
  .venv/bin/python -m pip install -q --no-compile -c constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
fi
