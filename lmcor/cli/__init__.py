"""`lmcor <command> ...`: the command layer. Each command's module here holds its flags and its
`main(argv)`; the work is done by the stage packages, none of which imports this package.

The table below only maps names, so that importing the CLI stays cheap. `python -m lmcor.cli
<command>` is the module form of every command (the pipeline runs its stages so). The commands
configured by Gin are described here too (`GIN_COMMANDS`): their --help and the checks of their
flags that need no configurable run before their module is imported, which for the trainer means
JAX, TensorFlow and SeqIO (10-20 s).

Modules:
  * `command_errors` - a command's mistake as one line on stderr, exit status 2;
  * `gin_values`, `gin_errors`, `gin_checks` - Gin values, one-line Gin errors, checks gin omits;
  * `gin_flags`    - --gin_file / --gin.NAME=VALUE: finding, reading and parsing them;
  * `gin_command`  - a Gin command's help, and `check_gin_flags`: every up-front flag check;
  * `distributed`  - joining a multi-host JAX job from flags, the environment or the cluster;
  * `*_command`    - one module per command.
"""
import importlib
import sys

from lmcor.cli.gin_command import GinCommand

COMMANDS = {
    "generate": "lmcor.cli.generate_command",
    "score": "lmcor.cli.score_command",
    "pool": "lmcor.cli.pool_command",
    "train": "lmcor.cli.train_command",
    "sample": "lmcor.cli.sample_command",
    "evaluate": "lmcor.cli.evaluate_command",
    "report": "lmcor.cli.report_command",
    # The pipeline with the quickstart's config as its default file.
    "quickstart": "lmcor.cli.pipeline_command:quickstart_main",
    "pipeline": "lmcor.cli.pipeline_command",
    "serve": "lmcor.cli.serve_command",
    "export": "lmcor.cli.export_command",
}

_RUN_MACROS = (
    ("RUN_DIR", "folder of every stage's output (pools/, one folder per row, eval/, report/)"),
    ("TRAIN_STEPS", "training steps of each row (the cap when pipeline.budget is set)"),
)

GIN_COMMANDS = {
    "train": GinCommand(
        "train", "Trains a corrector (T5X-style: Gin files and bindings are the only "
                 "configuration); rerunning with the same MODEL_DIR resumes.",
        macros=(("MODEL_DIR", "run folder: checkpoints/, train/ (TensorBoard), config.gin "
                              "(required)"),
                ("TRAIN_STEPS", "steps to train"),
                ("MIXTURE_OR_TASK_NAME", "SeqIO task, e.g. wmt_lmcor, e2e_finetune (the task "
                                         "file sets one)"),
                ("BATCH_SIZE", "global batch size"),
                ("EVAL_EVERY", "steps between validations"),
                ("BEST_METRIC", "validation metric that picks the kept checkpoint"),
                ("TASK_FEATURE_LENGTHS", "input and target lengths in tokens")),
        examples=("lmcor train --gin_file=runs/smoke.gin --gin.MODEL_DIR=/tmp/smoke",
                  "lmcor train --gin_file=models/t5_1_1_base.gin "
                  "--gin_file=runs/train_corrector.gin --gin_file=tasks/wmt.gin "
                  "--gin.MODEL_DIR=/tmp/wmt --gin.TRAIN_STEPS=1000"),
        start_from="runs/smoke.gin", distributed=True),
    "sample": GinCommand(
        "sample", "Few-shot prompts an LLM for a candidate pool (greedy + samples per input), "
                  "in shards that a rerun skips.",
        macros=(("OUTPUT_DIR", "pool folder: pool-NNNNN.jsonl shards and manifest.json"),
                ("DATA_DIR", "the shared datasets (default: ../shared/data)"),
                ("SEED", "seed of the prompts' shots and of sampling")),
        examples=("lmcor sample --gin_file=runs/sample.gin --gin_file=tasks/sampling/e2e.gin "
                  "--gin.OUTPUT_DIR=pools/e2e_test",),
        start_from="runs/sample.gin", distributed=True),
    "evaluate": GinCommand(
        "evaluate", "Writes the comparison table (LLM, reranking, oracle, correctors) of one "
                    "task's test pool, with bootstrap intervals and paired tests.",
        macros=(("EVAL_DIR", "output folder: results.json, results.md, predictions/ "
                             "(required)"),
                ("MIXTURE_OR_TASK_NAME", "task, e.g. e2e_lmcor (the task file sets one)"),
                ("EVAL_POOL", "candidate pool to evaluate (default: the task's)"),
                ("EVAL_SPLIT", "split of the task"),
                ("FINETUNE_DIR", "MODEL_DIR of the fine-tuned row (unset: row left out)"),
                ("LMCOR_SINGLE_DIR", "MODEL_DIR of the LMCor single-candidate row"),
                ("LMCOR_DIR", "MODEL_DIR of the LMCor row"),
                ("EVAL_MAX_EXAMPLES", "evaluate the first N inputs only"),
                ("EVAL_NUM_CANDIDATES", "candidates per input given to the correctors"),
                ("EVAL_TAGS", "tags of this evaluation, for the report's ablation tables")),
        examples=("lmcor evaluate --gin_file=runs/evaluate.gin --gin_file=tasks/e2e.gin "
                  "--gin.EVAL_DIR=/runs/e2e/eval --gin.LMCOR_DIR=/runs/e2e/lmcor",),
        start_from="runs/evaluate.gin"),
    "quickstart": GinCommand(
        "quickstart", "Samples fresh candidates for E2E test inputs, corrects them with the "
                      "released corrector and prints the table; with runs/quickstart_train.gin "
                      "it also trains the correctors. A rerun resumes from what is on disk.",
        macros=(*_RUN_MACROS,
                ("QUICKSTART_EXAMPLES", "dev inputs sampled for training "
                                        "(runs/quickstart_train.gin)"),
                ("QUICKSTART_TEST_EXAMPLES", "test inputs sampled for the table")),
        examples=("lmcor quickstart", "lmcor quickstart --gin.QUICKSTART_TEST_EXAMPLES=200 "
                                      "--gin.RUN_DIR=runs/qs200",
                  "lmcor quickstart --gin_file=runs/quickstart_train.gin"),
        default_gin="runs/quickstart.gin"),
    "pipeline": GinCommand(
        "pipeline", "Runs a README table's config: samples (or reads) its pools, trains its "
                    "rows, evaluates and reports; a rerun resumes from what is on disk.",
        macros=_RUN_MACROS,
        examples=("lmcor pipeline --gin_file=runs/tables/e2e.gin",
                  "lmcor pipeline --gin_file=runs/tables/wmt.gin --gin.RUN_DIR=/work/wmt"),
        # No default: a bare `lmcor pipeline` would otherwise run the quickstart and look like
        # a table that finished in minutes.
        start_from="runs/tables/e2e.gin"),
}


def run_gin_command(name: str, argv, body, input_errors=()) -> int:
    """`lmcor <name> argv` for a command in GIN_COMMANDS: see GinCommand.run."""
    return GIN_COMMANDS[name].run(argv, body, tuple(input_errors))


def _usage() -> str:
    names = ", ".join(sorted(COMMANDS))
    return f"usage: lmcor <command> [flags]\ncommands: {names}\n(lmcor <command> --help for one)"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"lmcor: unknown command {argv[0]!r}\n{_usage()}", file=sys.stderr)
            return 2
        print(_usage())
        return 0
    name, args = argv[0], argv[1:]
    if name in GIN_COMMANDS:
        checked = GIN_COMMANDS[name].front(args)
        if isinstance(checked, int):
            return checked
    module, _, function = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), function or "main")(args)

