"""Reads Orbax PyTree checkpoints into a target layout: lmcor's one restore path, behind the
trainer's resume (lmcor.training.checkpointing) and loading a trained MODEL_DIR for evaluation,
serving and export (lmcor.inference).

A trainer checkpoint step is a folder of two items: `state` (a PyTree: step, params, optimizer
state, RNG) and `data` (JSON: the data position); `item_dir` names an item's folder.
`restore(path, target)` places every array like `target` (its sharding and dtype), so a
checkpoint written on one mesh restores onto another. Names and shapes are compared with the
checkpoint's metadata before any array is read, and every difference is listed in one
`CheckpointMismatchError`.
"""
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import linen as nn

from lmcor.checkpoints.errors import CheckpointMismatchError

ITEMS = ("state", "data")


def item_dir(checkpoint_dir: str | os.PathLike, step: int, item: str = "state") -> str:
    """The folder of one item of a step (Orbax names a step's folder by the bare number)."""
    return os.path.join(os.path.abspath(os.fspath(checkpoint_dir)), str(step), item)


def _named_leaves(tree) -> dict:
    # Orbax's metadata holds dicts and lists where the target holds dataclasses and namedtuples
    # (TrainState, optax states): leaves are matched by their keys' names alone.
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf for path, leaf in flat}


def _check(stored: dict, wanted: dict, source: str, partial: bool) -> None:
    CheckpointMismatchError(
        source,
        missing=[k for k in wanted if k not in stored],
        unexpected=[] if partial else [k for k in stored if k not in wanted],
        mismatched=[(k, wanted[k].shape, stored[k].shape) for k in wanted
                    if k in stored and tuple(wanted[k].shape) != tuple(stored[k].shape)],
    ).raise_if_any()


def restore(path: str | os.PathLike, target: Any, *, partial: bool = False) -> Any:
    """The tree at `path` (an item folder, e.g. `item_dir(...)`), in `target`'s structure.

    `target` holds arrays or `jax.ShapeDtypeStruct`s, boxed or not; the result takes their
    dtypes and shardings, and a leaf without a sharding lands on the first local device.
    `partial=True` reads only the target's leaves (the params out of a trainer's state);
    otherwise the checkpoint must hold exactly the target's leaves.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no Orbax checkpoint at {path!r}")
    checkpointer = ocp.PyTreeCheckpointer()
    one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=getattr(x, "sharding", None) or one_device),
        nn.unbox(target))
    stored = checkpointer.metadata(path).item_metadata.tree
    _check(_named_leaves(stored), _named_leaves(abstract), path, partial)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=abstract, partial_restore=partial,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)))
