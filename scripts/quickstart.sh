#!/usr/bin/env bash
# README command (a): set up the virtualenv, then run the quickstart job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
exec .venv/bin/lmcor generate --prompt="${PROMPT:-The capital of France is}" --max_new_tokens=32 "$@"
