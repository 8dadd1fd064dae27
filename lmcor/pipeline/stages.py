"""Running a pipeline's stages: each one command (`python -m lmcor.cli <command> ...`) in its own
process, so each starts from a clean Gin config and shows its own progress bars.

A stage that finished leaves a DONE marker (DONE.json, its settings) in its folder; a rerun skips
it while the settings are the same, and otherwise runs it again, the command resuming from what
is on disk. Each stage's wall time goes to RUN_DIR/timings.json (kept for stages a rerun skips).
"""
import json
import os
import subprocess
import sys
import time
from typing import Dict, Sequence

from lmcor.io_utils import atomic_write_text, file_state
from lmcor.paths import REPO_ROOT

DONE = "DONE.json"


class StageError(RuntimeError):
    """A stage failed; the message names it and its command."""


def quoted(value: str) -> str:
    """A Python string literal for a --gin.NAME=VALUE flag: quoted, not bare, so a value that
    gin would read as something else (`123`, `True`, `[a]`) still reaches the stage as a string."""
    return repr(str(value))


def _done(folder: str, settings: Dict) -> bool:
    path = os.path.join(folder, DONE)
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        return json.load(f) == json.loads(json.dumps(settings))


def _mark_done(folder: str, settings: Dict) -> None:
    atomic_write_text(os.path.join(folder, DONE), json.dumps(settings, indent=1) + "\n")


class Stages:
    """The stages of one run, each `python -m lmcor.cli <command>` in its own process, counted
    and timed; a stage whose folder holds a DONE marker with the same settings is skipped."""

    def __init__(self, run_dir: str, stages: int):
        self.run_dir = os.path.abspath(run_dir)
        self.stages, self.stage = stages, 0
        self.start = time.time()
        self.timings: Dict[str, float] = {}

    def run(self, name: str, module: str, args: Sequence[str], folder: str = None,
            settings: Dict = None, writes: str = None) -> None:
        """Runs `python -m module args` unless `folder` holds a DONE marker with `settings`.

        `writes`: a file in `folder` that the stage writes only when its work is complete. A
        stage that exits 0 without writing it is not marked done. The trainer is such a stage:
        on SIGTERM it saves, exits 0 and writes no train_summary.json, so a preempted row is
        resumed by the next run instead of being taken as trained."""
        self.stage += 1
        head = f"[pipeline {self.stage}/{self.stages} | {time.time() - self.start:6.0f}s] {name}"
        if folder and _done(folder, settings):
            print(f"{head}: done already ({folder}), skipped", flush=True)
            return
        # -P: the working directory (the checkout, with its output folders) stays off sys.path;
        # lmcor comes from the virtualenv's editable install.
        cmd = [sys.executable, "-P", "-m", module, *args]
        print(f"{head}\n  $ {' '.join(cmd[2:])}", flush=True)
        started = time.time()
        proof = os.path.join(folder, writes) if folder and writes else None
        before = file_state(proof) if proof else None
        code = subprocess.call(cmd, cwd=REPO_ROOT)
        if code != 0:
            raise StageError(f"stage {name!r} failed (exit {code}): {' '.join(cmd)}")
        if proof and file_state(proof) in (None, before):
            raise StageError(f"stage {name!r} exited before finishing (it did not write "
                                  f"{proof}, as a trainer stopped by SIGTERM saves and exits "
                                  "without it); rerun the same command to resume it")
        self.timings[name] = round(time.time() - started, 1)
        if folder:
            _mark_done(folder, settings)

    def command(self, name: str, command: str, args: Sequence[str], folder: str = None,
                settings: Dict = None, writes: str = None) -> None:
        """`run` for the stage `lmcor <command> args`, through the CLI as a user would type it:
        its flag checks come first, then its module is imported under its own name (so a
        command's Gin configurables are registered once)."""
        self.run(name, "lmcor.cli", [command, *args], folder, settings, writes)

    def finish(self) -> None:
        """Writes timings.json: each stage's latest wall time (a stage skipped on a rerun keeps
        the time it took before) and `total`, this invocation's wall time."""
        path = os.path.join(self.run_dir, "timings.json")
        timings = {}
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                timings = json.load(f)
        self.timings["total"] = round(time.time() - self.start, 1)
        timings.update(self.timings)
        atomic_write_text(path, json.dumps(timings, indent=1) + "\n")
