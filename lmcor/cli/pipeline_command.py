"""`lmcor pipeline` and `lmcor quickstart`: sample, train, evaluate and report in one command
(lmcor.pipeline).

    lmcor pipeline --gin_file=gin/runs/tables/e2e.gin          # a README table
    lmcor quickstart [--gin.QUICKSTART_TEST_EXAMPLES=8 ...]    # gin/runs/quickstart.gin

A stage that fails ends the command with exit status 1 and a line naming the stage; rerunning
the same command resumes from what is on disk.
"""
import sys

from lmcor import cli
from lmcor.cli import gin_flags
from lmcor.cli.command_errors import report_error
from lmcor.cli.gin_command import GinFlags


def main(argv=None, command: str = "pipeline") -> int:
    def body(flags: GinFlags) -> int:
        from lmcor.pipeline.stages import StageError
        from lmcor.pipeline.table import pipeline

        gin_flags.parse_gin(flags.files, flags.bindings)
        try:
            path = pipeline()
        except StageError as e:
            return report_error(f"lmcor {command}", f"{e} (rerun the same command to resume)", 1)
        print(f"report: {path}")
        return 0

    return cli.run_gin_command(command, sys.argv[1:] if argv is None else argv, body)


def quickstart_main(argv=None) -> int:
    """`lmcor quickstart`: the pipeline, reading gin/runs/quickstart.gin unless given files."""
    return main(argv, command="quickstart")
