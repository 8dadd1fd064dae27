"""Pipeline stages recorded instead of run, for tests of what a pipeline plans."""
from lmcor.pipeline.stages import Stages


class Planned(Exception):
    """Raised where a test stops a pipeline (the recorder: at the report): every stage before it
    is planned, none run."""


def record_stages(monkeypatch) -> list:
    """Replaces running a stage by recording (name, command, the command's args); stops at the
    report. Every stage must be an `lmcor <command>` run through the CLI."""
    stages = []

    def record(pipe, name, module, args, folder=None, settings=None, writes=None):
        assert module == "lmcor.cli", (name, module)
        command, *rest = args
        if command == "report":
            raise Planned
        stages.append((name, command, rest))

    monkeypatch.setattr(Stages, "run", record)
    return stages
