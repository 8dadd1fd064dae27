#!/usr/bin/env bash
# README command (b): set up the virtualenv, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=25 "$@"
