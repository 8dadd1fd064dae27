#!/usr/bin/env bash
# The LMCor and fine-tuned rows of the E2E, JFLEG and WMT tables at the reference scale
# (gin/runs/gpu_scale.gin: batch 128, up to 2,000 steps) on one GPU. Every table's
# predictions, results.json / results.md, learning curves and timings go under OUT/<table>/.
#   bash scripts/gpu_tables.sh [OUT]              # default OUT: runs/gpu_tables
#   TOY=1 bash scripts/gpu_tables.sh /tmp/toy      # the same commands at toy size, on a CPU
#   TABLES="e2e" bash scripts/gpu_tables.sh        # some of the tables
# Needs the project installed with a CUDA build of jaxlib (jax[cuda12]) and the released pools
# of data/pools/. Each table resumes from what OUT holds, like `lmcor pipeline`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-runs/gpu_tables}")
LMCOR=${LMCOR:-.venv/bin/lmcor}
TABLES=${TABLES:-e2e jfleg wmt}
toy=()
if [[ "${TOY:-0}" == 1 ]]; then
  toy=(--gin.TRAIN_STEPS=2 --gin.pipeline.test_examples=4
       "--gin.pipeline.budget={'examples': 8, 'eval_every_examples': 8}"
       # Batch 1: a batch of 4 WMT paragraph rows (2,048 + 448 tokens) needs more than 16 GB.
       "--gin.pipeline.train_overrides=['--gin.BATCH_SIZE=1', '--gin.Evaluator.max_examples=4']"
       "--gin.pipeline.evaluate_overrides=[]")
fi
start=$SECONDS
for table in $TABLES; do
  "$LMCOR" pipeline --gin_file=gin/runs/tables/"$table".gin --gin_file=gin/runs/gpu_scale.gin \
    --gin.RUN_DIR="'$OUT/$table'" "${toy[@]}"
done
echo "gpu_tables: $TABLES in $((SECONDS - start)) s; results under $OUT"
