"""Pipeline stages recorded instead of run, for tests of what a quickstart pipeline plans."""
from lmcor import quickstart


class Planned(Exception):
    """Raised where a test stops a pipeline (the recorder: at the report): every stage before it
    is planned, none run."""


def record_stages(monkeypatch) -> list:
    """Replaces running a stage by recording (name, module, args); stops at the report."""
    stages = []

    def record(pipe, name, module, args, folder=None, settings=None, writes=None):
        if module == "lmcor.evaluation.report":
            raise Planned
        stages.append((name, module, list(args)))

    monkeypatch.setattr(quickstart.Pipeline, "run", record)
    return stages
