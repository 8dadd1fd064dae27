#!/usr/bin/env bash
# README command (a): set up the virtualenv, then run the quickstart job (Gemma 3 270M samples
# candidates for a slice of E2E test MRs, the released corrector rewrites them, the job prints
# the table and writes a report; gin/runs/quickstart.gin). Extra flags go to `lmcor quickstart`,
# e.g. --gin_file=runs/quickstart_train.gin for the demo that also trains the correctors.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
exec .venv/bin/lmcor quickstart "$@"
