"""Orbax checkpoints for the trainer: periodic async saves, keep the latest N plus the best by a
validation metric, exact resume (step, params, optimizer state, RNG, data position), and a
SIGTERM handler that turns preemption into "save, then exit 0".

Orbax writes each step into a temporary directory and renames it on finalize, so a process
killed mid-save leaves only an unfinished temp dir that the next manager ignores and removes.
A finalized step can still be damaged later (a disk or a copy that stopped early): resuming then
moves it aside as `<step>.corrupt-<reason>` and resumes from the newest step that restores.
"""
import os
import re
import signal
import threading
from typing import Callable, Optional

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from lmcor.checkpoints import orbax_io
from lmcor.checkpoints.errors import CheckpointMismatchError


class DataPositionMismatch(ValueError):
    pass


class UnrestorableCheckpoints(RuntimeError):
    pass


def _failure_reason(exc: BaseException) -> str:
    """The innermost explicit cause, on one short line: Orbax wraps TensorStore's error (whose
    status, e.g. DATA_LOSS, says what is wrong) in a message that dumps a whole store spec.
    Only `__cause__` is followed: `__context__` often leads to an unrelated StopIteration."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    if isinstance(exc, CheckpointMismatchError):  # its problems are on the lines after the first
        text = ["".join(text[:1]) + " " + "; ".join(line.strip() for line in text[1:])]
    text = text[0].split(" [tensorstore_spec")[0] if text else ""
    # Driver layers and the store's path repeat what the warning already names.
    text = re.sub(r'Error opening "\w+" driver: ', "", text)
    text = re.sub(r' in OCDBT database at local file "[^"]*"', "", text)
    if not re.match(r"[A-Z_]+: ", text):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 300 else text[:297] + "..."


def _reason_slug(reason: str) -> str:
    return re.match(r"\w+", reason).group(0).lower()


def _all_hosts(ok: bool) -> bool:
    # Every host must restore the same step, so one host's failure counts for all.
    if jax.process_count() == 1:
        return ok
    return bool(np.min(multihost_utils.process_allgather(np.asarray(int(ok)))))


@gin.configurable(denylist=["directory"])
class Checkpointer:
    def __init__(self, directory: str, save_every: int = 1000, keep: int = 3, keep_best: int = 1,
                 best_metric: Optional[str] = None, best_mode: str = "max",
                 async_save: bool = True):
        self.best_metric, self.best_mode = best_metric, best_mode
        keepers = [policies.LatestN(n=keep)]
        best_fn = None
        if best_metric:
            best_fn = lambda m: float(m[best_metric])  # noqa: E731
            keepers.append(policies.BestN(get_metric_fn=best_fn, reverse=best_mode == "min",
                                          n=keep_best, keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=save_every, best_fn=best_fn, best_mode=best_mode,
            preservation_policy=policies.AnyPreservationPolicy(keepers),
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True)
        # Orbax refuses relative paths, and only in its background save thread, where the error
        # is logged rather than raised: a relative MODEL_DIR would train without checkpoints.
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                             item_names=orbax_io.ITEMS)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def best_step(self) -> Optional[int]:
        return self.manager.best_step()

    def save(self, step: int, state, data_position: dict, metrics=None, force=False) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_position))
        return self.manager.save(step, args=args, metrics=metrics, force=force)

    def restore_latest(self, abstract_state,
                       expected_position: Optional[Callable[[int], dict]] = None):
        """(step, state, data position) of the newest step that restores, or None when there is
        no checkpoint. Newer steps that fail to restore are moved aside (renamed, never
        deleted) with a warning, once an older step has restored: only then is the failure the
        step's own rather than, say, a changed model configuration, which would fail them all.
        If none restores, nothing is touched and the error names each step and its reason."""
        failed = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                out = self._restore_items(step, abstract_state)
            except Exception as e:  # noqa: BLE001  (any unreadable file: tensorstore, json, io)
                out, reason = None, _failure_reason(e)
            if not _all_hosts(out is not None):
                failed.append((step, reason if out is None else "failed on another host"))
                continue
            state, pos = self._check_position(step, out, expected_position)
            for bad, why in failed:
                aside = self._move_aside(bad, why)
                logging.warning("checkpoint step %d (%s) cannot be restored (%s): moved to %s; "
                                "resuming from step %d", bad, self._step_dir(bad), why, aside,
                                step)
            if failed:
                self.manager.reload()
            return step, state, pos
        if not failed:
            return None
        paths = " ".join(os.fspath(self._step_dir(s)) for s, _ in failed)
        raise UnrestorableCheckpoints(
            f"no checkpoint in {self.manager.directory} restores ("
            + "; ".join(f"step {s}: {why}" for s, why in failed)
            + f"). If the model or optimizer configuration changed, train into a new MODEL_DIR; "
            f"if the files are damaged, delete them to start over: rm -r {paths}")

    def _restore_items(self, step: int, abstract_state) -> dict:
        """{"state": `step`'s state in the layout of `abstract_state` (arrays or
        ShapeDtypeStructs carrying shardings), "data": its data position}."""
        state = orbax_io.restore(orbax_io.item_dir(self.manager.directory, step), abstract_state)
        data = self.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
        return {"state": state, "data": data["data"]}

    def _check_position(self, step: int, out: dict, expected_position):
        pos = dict(out["data"])
        expected = expected_position(step) if expected_position is not None else None
        if expected is not None:
            diffs = {k: (pos.get(k), v) for k, v in expected.items() if pos.get(k) != v}
            if diffs:
                raise DataPositionMismatch(
                    f"checkpoint {self._step_dir(step)}: data position fields differ "
                    f"(saved, now): {diffs}")
        return out["state"], pos

    def _step_dir(self, step: int):
        return self.manager.directory / str(step)

    def _move_aside(self, step: int, reason: str) -> str:
        """Renames the step to a name outside Orbax's step pattern (digits only) and its temp
        pattern, so the manager neither lists it, counts it against `keep`, nor deletes it, and
        a new save of the same step does not collide with it."""
        base = self.manager.directory / f"{step}.corrupt-{_reason_slug(reason)}"
        target, n = base, 1
        while target.exists():  # damaged twice at the same step: keep both
            n += 1
            target = base.with_name(f"{base.name}.{n}")
        # Every host picks the name before the main host renames, and resumes only after.
        self._sync(f"lmcor_checkpoint_{step}_named")
        if jax.process_index() == 0:
            self._step_dir(step).rename(target)
        self._sync(f"lmcor_checkpoint_{step}_moved_aside")
        return os.fspath(target)

    @staticmethod
    def _sync(name: str):
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(name)

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


class PreemptionFlag:
    """Installs a SIGTERM handler that only records the request; the train loop saves at the
    next step boundary (a signal handler must not run JAX or Orbax code itself)."""

    def __init__(self):
        self.event = threading.Event()
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint at the next step boundary")
        self.event.set()

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    @property
    def requested(self) -> bool:
        return self.event.is_set()
