"""Save and restore lmcor param trees with Orbax (atomic: Orbax writes a temp dir and renames it).

`restore_params(path, target)` places every array like `target` (its sharding and dtype), so a
checkpoint written on one mesh restores onto another; without a target, arrays land on one device.
A target whose names or shapes differ from the checkpoint gets one `CheckpointMismatchError`.
"""
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import linen as nn
from flax import traverse_util

from lmcor.checkpoints.errors import CheckpointMismatchError


def _checkpointer() -> ocp.StandardCheckpointer:
    return ocp.StandardCheckpointer()


def save_params(path: str | os.PathLike, params: Any, *, overwrite: bool = False) -> str:
    """Writes `params` (boxed or plain arrays) to the directory `path`; returns its absolute path."""
    path = os.path.abspath(os.fspath(path))
    ckptr = _checkpointer()
    ckptr.save(path, nn.unbox(params), force=overwrite)
    ckptr.wait_until_finished()
    return path


def _stored_tree(path: str) -> dict:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no Orbax checkpoint at {path!r}")
    return _checkpointer().metadata(path).item_metadata.tree


def _abstract(x) -> jax.ShapeDtypeStruct:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _check_against(stored: dict, target: dict, source: str) -> None:
    have = traverse_util.flatten_dict(stored, sep="/")
    want = traverse_util.flatten_dict(target, sep="/")
    CheckpointMismatchError(
        source,
        missing=[k for k in want if k not in have],
        unexpected=[k for k in have if k not in want],
        mismatched=[(k, want[k].shape, have[k].shape) for k in want
                    if k in have and tuple(want[k].shape) != tuple(have[k].shape)],
    ).raise_if_any()


def restore_params(path: str | os.PathLike, target: Any = None) -> Any:
    """Reads a tree written by `save_params`.

    `target` may hold arrays or `jax.ShapeDtypeStruct`s (boxed or not); the result takes their
    shardings and dtypes. Without it, every array is restored onto the first local device.
    """
    path = os.path.abspath(os.fspath(path))
    stored = _stored_tree(path)
    if target is None:
        one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device), stored)
    else:
        abstract = jax.tree.map(_abstract, nn.unbox(target))
        _check_against(stored, abstract, path)
    return _checkpointer().restore(path, abstract)
