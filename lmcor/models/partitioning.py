"""The one table that maps logical axis names to mesh axes (`data`, `model`).

Model code annotates params (`nn.with_logical_partitioning`) and large activations
(`nn.with_logical_constraint`) with the logical names below; only this module knows the mesh.
"""
from typing import Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "model")

# Logical axes used by lmcor models:
#   batch, length, kv_length     activations
#   embed                        model width (d_model)
#   mlp                          feed-forward hidden width
#   heads, kv_heads, head_dim    attention projections
#   vocab                        embedding / LM head rows
#   relpos_buckets               T5 relative position bias table
#   lora                         LoRA rank (small: never split)
LOGICAL_AXIS_RULES = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("embed", None),
    ("head_dim", None),
    ("length", None),
    ("kv_length", None),
    ("relpos_buckets", None),
    ("lora", None),
)

# Fully-sharded data parallel: additionally split the model width of every param over `data`.
FSDP_AXIS_RULES = tuple(("embed", "data") if k == "embed" else (k, v) for k, v in LOGICAL_AXIS_RULES)


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, model) mesh; `data=-1` takes every device not used by `model`."""
    devices = list(jax.devices() if devices is None else devices)
    if data == -1:
        if len(devices) % model:
            raise ValueError(f"{len(devices)} devices cannot be split into model={model}")
        data = len(devices) // model
    if data * model > len(devices):
        raise ValueError(f"mesh {data}x{model} needs {data * model} devices, have {len(devices)}")
    grid = np.asarray(devices[: data * model]).reshape(data, model)
    return Mesh(grid, MESH_AXES)


def _fit(spec: PartitionSpec, shape, mesh: Mesh) -> PartitionSpec:
    # A dimension that a mesh axis does not divide is replicated instead (e.g. Gemma's single
    # KV head on a model=2 mesh); silently wrong shapes are worse than a little duplicated memory.
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
        out.append(axes if names and dim % size == 0 else None)
    return PartitionSpec(*out)


def logical_to_sharding(logical_tree, shapes_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """Maps a tree of logical PartitionSpecs (as from `nn.get_partition_spec`) to NamedShardings."""

    def one(logical, shape):
        spec = nn.logical_to_mesh_axes(logical, rules) if logical is not None else PartitionSpec()
        return NamedSharding(mesh, _fit(spec, shape, mesh))

    shapes = jax.tree.map(lambda x: tuple(x.shape), shapes_tree)
    return jax.tree.map(one, logical_tree, shapes,
                        is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)


def param_shardings(boxed_params, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """NamedShardings for a (possibly `nn.Partitioned`-boxed) param tree."""
    logical = nn.get_partition_spec(boxed_params)
    return logical_to_sharding(logical, nn.unbox(boxed_params), mesh, rules)
