"""`lmcor evaluate`: the comparison table of one task's test pool (lmcor.evaluation.evaluate).

    lmcor evaluate --gin_file=gin/runs/evaluate.gin --gin_file=gin/tasks/e2e.gin \
        --gin.EVAL_DIR=/runs/e2e/eval --gin.LMCOR_DIR=/runs/e2e/lmcor

Prints the table (results.md) and the notes of rows left out.
"""
import sys

from absl import logging

from lmcor import cli
from lmcor.cli import gin_flags
from lmcor.cli.gin_command import GinFlags
from lmcor.evaluation.evaluate import evaluate, evaluation
from lmcor.evaluation.results_table import markdown_table

# What a bad pool, folder or corrector raises (PoolError, AdapterError and BaseWeightsMismatch
# are ValueErrors; a missing or unwritable file, an OSError): one line, exit status 2.
INPUT_ERRORS = (OSError, ValueError)


def _main(flags: GinFlags) -> int:
    logging.set_verbosity(logging.INFO)
    gin_flags.parse_gin(flags.files, flags.bindings, finalize=False)
    results = evaluate(evaluation())
    print(markdown_table(results), end="")
    for note in results["notes"]:
        print(f"note: {note}")
    return 0


def main(argv=None) -> int:
    return cli.run_gin_command("evaluate", sys.argv[1:] if argv is None else argv, _main,
                               INPUT_ERRORS)
