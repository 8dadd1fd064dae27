"""Orbax checkpoints for the trainer: periodic async saves, keep the latest N plus the best by a
validation metric, exact resume (step, params, optimizer state, RNG, data position), and a
SIGTERM handler that turns preemption into "save, then exit 0".

Orbax writes each step into a temporary directory and renames it on finalize, so a process
killed mid-save leaves only an unfinished temp dir that the next manager ignores and removes.
"""
import os
import signal
import threading
from typing import Optional

import gin
import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies


class DataPositionMismatch(ValueError):
    pass


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
                                             item_names=("state", "data"))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def best_step(self) -> Optional[int]:
        return self.manager.best_step()

    def save(self, step: int, state, data_position: dict, metrics=None, force=False) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_position))
        return self.manager.save(step, args=args, metrics=metrics, force=force)

    def restore(self, step: int, abstract_state, expected_position: Optional[dict] = None):
        """Restores `step` into the layout of `abstract_state` (a tree of arrays or
        ShapeDtypeStructs carrying shardings). Refuses a data position that another data
        configuration produced, since silently changing the order breaks exact resume."""
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state)
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        pos = dict(out["data"])
        if expected_position is not None:
            diffs = {k: (pos.get(k), v) for k, v in expected_position.items() if pos.get(k) != v}
            if diffs:
                raise DataPositionMismatch(
                    f"checkpoint {self.manager.directory}/{step}: data position fields differ "
                    f"(saved, now): {diffs}")
        return out["state"], pos

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
