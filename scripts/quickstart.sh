#!/usr/bin/env bash
# README command (a): set up the virtualenv, then run the quickstart job (sample with Gemma 3
# 270M on a slice of E2E, train correctors, evaluate, report; gin/runs/quickstart.gin).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
exec .venv/bin/lmcor quickstart "$@"
