"""The checkpoints of a finished (or running) `lmcor train` run: which step a corrector is read
at, and its params at that step, through the one Orbax restore (lmcor.checkpoints.orbax_io).

The step is the one asked for, else the best by validation that the trainer recorded in
MODEL_DIR/train_summary.json, else the latest. Only the trainer's Checkpointer knows the
validation metric and whether higher is better; an Orbax manager opened without them answers
best_step() with the latest step, so the trainer's own record is read instead.
"""
import json
import os
from typing import Any, Optional, Sequence

from absl import logging

from lmcor.paths import TRAIN_SUMMARY


def _manager(checkpoint_dir: str):
    """A read-only view of the trainer's steps (which exist, which is the latest)."""
    import orbax.checkpoint as ocp

    from lmcor.checkpoints import orbax_io

    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"{checkpoint_dir}: no checkpoints (train the corrector first)")
    # Orbax takes only absolute paths (a relative MODEL_DIR failed deep inside tensorstore).
    return ocp.CheckpointManager(os.path.abspath(checkpoint_dir), item_names=orbax_io.ITEMS)


def _validated_step(checkpoint_dir: str, kept: Sequence[int]) -> Optional[int]:
    """The step the trainer selected by validation, from the run's train_summary.json."""
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint_dir)), TRAIN_SUMMARY)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        best = json.load(f).get("best_step")
    if best is not None and best not in kept:
        logging.warning("%s: best step %s is not among the kept checkpoints %s; using the "
                        "latest", path, best, sorted(kept))
        return None
    return best


def checkpoint_step(checkpoint_dir: str, step: Optional[int] = None) -> int:
    """The step `restore_params` reads: `step`, else the best by validation, else the latest."""
    manager = _manager(checkpoint_dir)
    try:
        if step is None:
            step = _validated_step(checkpoint_dir, manager.all_steps())
        if step is None:
            step = manager.latest_step()
    finally:
        manager.close()
    if step is None:
        raise FileNotFoundError(f"{checkpoint_dir}: no finished checkpoint")
    return step


def restore_params(checkpoint_dir: str, target: Any, step: Optional[int] = None):
    """Only the params of a trainer checkpoint at `checkpoint_step(checkpoint_dir, step)`, laid
    out as `target` (arrays or shapes); the optimizer state is never read."""
    from lmcor.checkpoints import orbax_io

    step = checkpoint_step(checkpoint_dir, step)
    params = orbax_io.restore(orbax_io.item_dir(checkpoint_dir, step), {"params": target},
                              partial=True)["params"]
    logging.info("corrector: restored step %d from %s", step, checkpoint_dir)
    return params
