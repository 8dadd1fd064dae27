"""A corrector's MODEL_DIR, as `lmcor train` leaves it or as a released adapter folder
(lmcor.checkpoints.adapter): its Gin config, and the checkpoint step and trained params it
restores.

A run folder holds Orbax checkpoints in `checkpoints/` (the best step by the validation metric
if one was tracked, else the latest) and the run's Gin config in `config.gin` (T5X's
operative-config convention).
"""
import json
import os
from typing import Callable, Optional, Sequence

import gin
import jax
from absl import logging
from flax import linen as nn

from lmcor.paths import CHECKPOINTS, RUN_CONFIG, TRAIN_SUMMARY


def parse_run_config(model_dir: str, gin_bindings: Sequence[str] = (),
                     overrides: Optional[Callable[[], None]] = None):
    """Parses MODEL_DIR/config.gin, then `gin_bindings` (Gin statements written by the caller,
    e.g. the evaluation's decode settings), then calls `overrides`, which parses what a command
    line adds (lmcor.cli: --gin_file and --gin flags, with its checks) -> the `train.model`
    reference, or None. A run that saved no config needs bindings or overrides."""
    from lmcor.training import loop  # noqa: F401  (registers `train`, whose `model` binding we read)

    run_config = os.path.join(model_dir, RUN_CONFIG)
    if not os.path.isfile(run_config) and not gin_bindings and overrides is None:
        raise FileNotFoundError(f"{run_config}: no such file; pass the run's --gin_file flags")
    if os.path.isfile(run_config):
        # Absolute: gin tries a relative path under each search folder first and logs an ERROR
        # for each one that lacks it. The run's data factories may live in modules serving
        # never imports, and a run saved by an older checkout may import modules that have moved
        # since; skip them.
        try:
            gin.parse_config_file(os.path.abspath(run_config), skip_unknown=True)
        except Exception as e:  # gin raises several types; the file name is what users need
            raise ValueError(f"bad gin file {run_config}: {e}") from e
    for binding in gin_bindings:
        try:
            gin.parse_config(binding)
        except Exception as e:  # gin's reason is its message's first line; the rest is location
            raise ValueError(f"bad gin binding {binding!r}: "
                             f"{str(e).strip().splitlines()[0]}") from e
    if overrides is not None:
        overrides()
    return bound("train.model")


def bound(key: str):
    """The value Gin binds to `key` (through the macros it reads), None when unbound."""
    try:
        value = gin.query_parameter(key)
        for _ in range(16):  # gin refuses cyclic macros; this only bounds the loop
            # A `%NAME` value is a reference to gin's `macro` configurable in scope NAME.
            if not (isinstance(value, gin.config.ConfigurableReference)
                    and value.configurable.selector == "gin.macro"):
                return value
            macro = value.scoped_selector.rsplit("/", 1)[0]
            value = gin.query_parameter(f"{macro}/gin.macro.value")
    except ValueError:
        pass
    return None


def _manager(checkpoint_dir: str):
    """A read-only view of the trainer's steps (which exist, which is the latest)."""
    import orbax.checkpoint as ocp

    from lmcor.checkpoints import orbax_io

    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"{checkpoint_dir}: no checkpoints (train the corrector first)")
    # Orbax takes only absolute paths (a relative MODEL_DIR failed deep inside tensorstore).
    return ocp.CheckpointManager(os.path.abspath(checkpoint_dir), item_names=orbax_io.ITEMS)


def _validated_step(checkpoint_dir: str, kept: Sequence[int]) -> Optional[int]:
    """The step the trainer selected by validation, from MODEL_DIR/train_summary.json. Only the
    trainer's Checkpointer knows the metric and whether higher is better; a manager opened
    without them answers best_step() with the latest step."""
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


def _pick_step(manager, checkpoint_dir: str, step: Optional[int]) -> int:
    """`step`, else the best validated step of a finished run, else the latest."""
    if step is None:
        step = _validated_step(checkpoint_dir, manager.all_steps())
    if step is None:
        step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"{checkpoint_dir}: no finished checkpoint")
    return step


def checkpoint_step(checkpoint_dir: str, step: Optional[int] = None) -> int:
    """The step `restore_params` reads: `step`, else the best by validation, else the latest."""
    manager = _manager(checkpoint_dir)
    try:
        return _pick_step(manager, checkpoint_dir, step)
    finally:
        manager.close()


def restore_params(checkpoint_dir: str, model, step: Optional[int] = None):
    """Only the params of a trainer checkpoint (the optimizer state is never read)."""
    from lmcor.checkpoints import orbax_io

    manager = _manager(checkpoint_dir)
    try:
        step = _pick_step(manager, checkpoint_dir, step)
    finally:
        manager.close()
    abstract = nn.unbox(jax.eval_shape(model.init_fn, jax.random.key(0)))
    params = orbax_io.restore(orbax_io.item_dir(checkpoint_dir, step), {"params": abstract},
                              partial=True)["params"]
    logging.info("corrector: restored step %d from %s", step, checkpoint_dir)
    return params


def trained_identity(model_dir: str) -> dict:
    """Which trained weights `trained_params(model_dir)` reads: the checkpoint step for a run
    folder (it moves when the run trains on or a better step is validated), the step and
    weights sha256 for a released adapter."""
    from lmcor.checkpoints import adapter

    if adapter.is_adapter_dir(model_dir):
        info = adapter.manifest(model_dir)
        return {"adapter_step": info["step"], "adapter_sha256": info["sha256"]}
    return {"step": checkpoint_step(os.path.join(model_dir, CHECKPOINTS))}


def trained_params(model_dir: str, model, step: Optional[int] = None):
    """The trained params of a run folder (`restore_params` of its checkpoints) or of a
    released adapter folder (lmcor.checkpoints.adapter), which holds one step only."""
    from lmcor.checkpoints import adapter

    if not adapter.is_adapter_dir(model_dir):
        return restore_params(os.path.join(model_dir, CHECKPOINTS), model, step)
    info = adapter.manifest(model_dir)
    if step is not None and step != info["step"]:
        raise ValueError(f"{model_dir}: a released adapter holds step {info['step']} only, "
                         f"not {step}")
    abstract = nn.unbox(jax.eval_shape(model.init_fn, jax.random.key(0)))
    logging.info("corrector: adapter of step %d from %s", info["step"], model_dir)
    return adapter.load_adapter(model_dir, abstract)
