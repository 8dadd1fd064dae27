"""`lmcor train`: the T5X-style trainer.

    lmcor train --gin_file=gin/models/t5_1_1_base.gin --gin_file=gin/runs/train_corrector.gin \
        --gin_file=gin/tasks/wmt.gin --gin.MODEL_DIR=/tmp/run [--gin.TRAIN_STEPS=1000] \
        [--coordinator_address=host:port --num_processes=N --process_id=I]

Gin is the only wiring (`train.*` in lmcor/training/loop.py, `make_optimizer.*`,
`make_schedule.*`, `Checkpointer.*`, the model and data factories). Checkpoints live in
MODEL_DIR/checkpoints, TensorBoard in MODEL_DIR/train, the run's Gin config in MODEL_DIR/config.gin.
Re-running with the same MODEL_DIR resumes from the latest checkpoint exactly.
"""
import json
import sys

from lmcor import cli
from lmcor.cli import distributed, gin_flags
from lmcor.cli.gin_command import GinFlags
from lmcor.training import checkpointing
from lmcor.training.logging import setup_console_logging
from lmcor.training.loop import train


def run(argv) -> dict:
    """Parses distributed + gin flags, joins the job, trains; returns train()'s summary."""
    return _run(cli.GIN_COMMANDS["train"].parse(argv))


def _run(flags: GinFlags) -> dict:
    setup_console_logging()
    distributed.initialize(**flags.distributed)
    gin_flags.parse_gin(flags.files, flags.bindings)
    with checkpointing.PreemptionFlag() as flag:
        return train(preemption=flag)


def _main(flags: GinFlags) -> int:
    summary = _run(flags)
    if distributed.is_main_host():
        print(json.dumps({"final_step": summary["step"], "stopped": summary["stopped"],
                          "last_loss": summary["losses"][-1] if summary["losses"] else None}))
    return 0


def main(argv=None) -> int:
    return cli.run_gin_command("train", sys.argv[1:] if argv is None else argv, _main)
