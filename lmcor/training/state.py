"""Train state, optimizers (Adafactor with T5 defaults, AdamW) and learning-rate schedules.

The state is created directly in its sharded layout: shapes come from `jax.eval_shape`, shardings
from the model's logical axis names via `lmcor.models.partitioning`, and the init function is
jitted with those output shardings so no host ever materialises the full unsharded model.
"""
from typing import Any, Callable, Optional

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lmcor.models import partitioning


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of optimizer updates applied
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32[2] raw key; dropout keys are fold_in(rng, step) so resume is exact


@gin.configurable
def make_schedule(name: str = "constant", learning_rate: float = 1e-3, warmup_steps: int = 0,
                  decay_steps: Optional[int] = None, end_fraction: float = 0.0):
    """constant | rsqrt | cosine. rsqrt is T5's `1/sqrt(max(step, warmup))`, scaled so that it
    equals `learning_rate` while step <= warmup_steps; cosine warms up linearly then decays to
    `end_fraction * learning_rate` at `decay_steps`."""
    if name == "constant":
        return optax.constant_schedule(learning_rate)
    if name == "rsqrt":
        warm = max(int(warmup_steps), 1)
        return lambda step: learning_rate * jnp.sqrt(warm / jnp.maximum(step, warm).astype(jnp.float32))
    if name == "cosine":
        if not decay_steps:
            raise ValueError("make_schedule: the cosine schedule needs decay_steps")
        return optax.warmup_cosine_decay_schedule(
            0.0, learning_rate, int(warmup_steps), int(decay_steps), learning_rate * end_fraction)
    raise ValueError(f"make_schedule: unknown schedule {name!r} (constant, rsqrt, cosine)")


@gin.configurable
def make_optimizer(schedule: Callable, name: str = "adafactor", weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, clip_norm: Optional[float] = None,
                   momentum: Optional[float] = None):
    """adafactor (T5 defaults: factored second moments, decay 0.8, update clipping 1.0,
    parameter-scale-relative steps) or adamw."""
    if name == "adafactor":
        opt = optax.adafactor(schedule, decay_rate=0.8, clipping_threshold=1.0, momentum=momentum,
                              multiply_by_parameter_scale=True, factored=True,
                              weight_decay_rate=weight_decay or None)
    elif name == "adamw":
        opt = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay)
    else:
        raise ValueError(f"make_optimizer: unknown optimizer {name!r} (adafactor, adamw)")
    if clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(clip_norm), opt)
    return opt


def _path_key(path) -> tuple:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _derived_spec(param_shape, param_spec: PartitionSpec, leaf_shape) -> PartitionSpec:
    """Spec for an optimizer leaf derived from its parameter: same shape -> same spec; one dim
    reduced away (Adafactor's factored row/column moments) -> drop that dim's entry."""
    entries = tuple(param_spec) + (None,) * (len(param_shape) - len(param_spec))
    if tuple(leaf_shape) == tuple(param_shape):
        return PartitionSpec(*entries)
    if len(leaf_shape) == len(param_shape) - 1:
        for drop in range(len(param_shape)):
            if tuple(param_shape[:drop]) + tuple(param_shape[drop + 1:]) == tuple(leaf_shape):
                return PartitionSpec(*(entries[:drop] + entries[drop + 1:]))
    return PartitionSpec()


def opt_state_shardings(abstract_opt_state, abstract_params, param_sh, mesh: Mesh):
    """Matches every optimizer-state leaf to the parameter whose tree path ends its own path."""
    by_path = {}
    for (path, p), sh in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                             jax.tree.leaves(param_sh)):
        by_path[_path_key(path)] = (p.shape, sh.spec)

    def one(path, leaf):
        key = _path_key(path)
        for start in range(len(key)):
            if key[start:] in by_path:
                shape, spec = by_path[key[start:]]
                return NamedSharding(mesh, _derived_spec(shape, spec, leaf.shape))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


def state_shardings(abstract_boxed_params, optimizer, mesh: Mesh, rules) -> TrainState:
    params = nn.unbox(abstract_boxed_params)
    param_sh = partitioning.param_shardings(abstract_boxed_params, mesh, rules)
    abstract_opt = jax.eval_shape(optimizer.init, params)
    replicated = NamedSharding(mesh, PartitionSpec())
    return TrainState(step=replicated, params=param_sh,
                      opt_state=opt_state_shardings(abstract_opt, params, param_sh, mesh),
                      rng=replicated)


def create_state(init_fn: Callable, optimizer, mesh: Mesh, seed: int,
                 rules=partitioning.LOGICAL_AXIS_RULES, init_params=None):
    """Returns (state, shardings). `init_fn(rng) -> boxed params`; `init_params` (plain or boxed
    arrays, e.g. from a checkpoint importer) replaces the random initialisation."""
    key = jax.random.PRNGKey(seed)
    init_key, state_key = jax.random.split(key)
    abstract = jax.eval_shape(init_fn, init_key)
    shardings = state_shardings(abstract, optimizer, mesh, rules)

    def build(params):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init(params), rng=state_key)

    with mesh:
        if init_params is None:
            state = jax.jit(lambda k: build(nn.unbox(init_fn(k))), out_shardings=shardings)(init_key)
        else:
            params = check_params(nn.unbox(init_params), nn.unbox(abstract))
            params = jax.device_put(params, shardings.params)
            state = jax.jit(build, out_shardings=shardings)(params)
    return state, shardings


def nbytes(tree) -> int:
    """Bytes held by a tree's arrays (what a checkpoint of it costs, before compression)."""
    return int(sum(np.prod(np.shape(x)) * jnp.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))


def check_params(params, abstract):
    """Imported params must match the model's tree exactly; one error lists every problem."""
    want = {_path_key(p): v for p, v in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    have = {_path_key(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    problems = [f"missing {'/'.join(k)}" for k in want if k not in have]
    problems += [f"unexpected {'/'.join(k)}" for k in have if k not in want]
    problems += [f"{'/'.join(k)}: shape {tuple(np.shape(have[k]))} != {tuple(want[k].shape)}"
                 for k in want if k in have and tuple(np.shape(have[k])) != tuple(want[k].shape)]
    if problems:
        raise ValueError("initial params do not fit the model:\n  " + "\n  ".join(problems))
    return jax.tree.map(lambda v, a: jnp.asarray(v, a.dtype), params, abstract)
