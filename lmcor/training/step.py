"""Loss (cross-entropy with optional label smoothing and z-loss) and the jitted, sharded train
step with gradient accumulation over micro-batches.

The loss is normalised by the number of target tokens in the WHOLE global batch, so k
micro-batches of b examples produce the same update as one batch of k*b, on any mesh.
"""
from typing import Callable

import gin
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from lmcor.training.state import TrainState


@gin.configurable(denylist=["logits", "targets", "weights"])
def token_losses(logits, targets, weights, label_smoothing: float = 0.0, z_loss: float = 0.0):
    """Returns (weighted cross-entropy sum, weighted z-loss sum, weight sum), all float32.

    Label smoothing spreads `label_smoothing` of the target mass over the other vocab entries and
    subtracts that distribution's entropy so a perfect prediction still scores 0 (as T5X does);
    z-loss penalises log(Z)^2 to keep the softmax normaliser near 1 (stabilises bf16 training).
    """
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    log_probs = logits - log_z[..., None]
    target_lp = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    if label_smoothing:
        on = 1.0 - label_smoothing
        off = label_smoothing / (vocab - 1)
        sum_lp = jnp.sum(log_probs, axis=-1)
        ce = -(on * target_lp + off * (sum_lp - target_lp))
        ce -= -(on * jnp.log(on) + (vocab - 1) * off * jnp.log(off + 1e-20))
    else:
        ce = -target_lp
    w = weights.astype(jnp.float32)
    return jnp.sum(ce * w), jnp.sum(z_loss * jnp.square(log_z) * w), jnp.sum(w)


def _split_micro(batch, k: int, mesh):
    """[B, ...] -> [k, B/k, ...]; micro-batch j takes rows j, j+k, ... so each one stays spread
    over every data shard instead of living on a few devices."""
    def one(x):
        if x.shape[0] % k:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by {k} micro-batches")
        y = x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
        spec = PartitionSpec(None, "data", *([None] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))
    return jax.tree.map(one, batch)


def _grad_sums(forward_fn: Callable, params, batch, rng, loss_fn, frozen):
    def objective(p):
        ce, zl, w = loss_fn(*forward_fn(p, batch, rng, frozen))
        return ce + zl, (ce, zl, w)
    (_, sums), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return grads, sums


def accumulate_grads(forward_fn, params, batch, rng, k: int, mesh, loss_fn=token_losses,
                     frozen=None):
    """Sums of gradients and (ce, z, weight) over k micro-batches (lax.scan keeps memory flat).
    `frozen`: parameters the forward pass reads but that get no gradient."""
    if k == 1:
        return _grad_sums(forward_fn, params, batch, rng, loss_fn, frozen)
    micro = _split_micro(batch, k, mesh)

    def body(carry, xs):
        i, mb = xs
        mb_rng = None if rng is None else jax.random.fold_in(rng, i)
        grads, sums = _grad_sums(forward_fn, params, mb, mb_rng, loss_fn, frozen)
        return jax.tree.map(jnp.add, carry, (grads, sums)), None

    zeros = (jax.tree.map(jnp.zeros_like, params), (jnp.zeros(()),) * 3)
    (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(k), micro))
    return grads, sums


@gin.configurable(denylist=["forward_fn", "optimizer", "schedule", "shardings", "mesh",
                            "frozen_shardings"])
def make_train_step(forward_fn: Callable, optimizer, schedule, shardings: TrainState, mesh,
                    num_microbatches: int = 1, loss_fn=token_losses, frozen_shardings=None):
    """Returns jitted `step(state, batch, frozen=None) -> (state, metrics)`.

    `forward_fn(params, batch, dropout_rng, frozen) -> (logits [B, T, V], targets [B, T],
    weights [B, T])`, the models' `loss_inputs`; `frozen` (laid out as `frozen_shardings`) is
    what the model reads but does not train. A non-finite loss or gradient leaves the
    state unchanged (metrics['finite'] = False) so the caller can stop without ever holding a
    poisoned state.
    """
    def step(state: TrainState, batch, frozen=None):
        rng = jax.random.fold_in(state.rng, state.step)
        grads, (ce, zl, w) = accumulate_grads(forward_fn, state.params, batch, rng,
                                              num_microbatches, mesh, loss_fn, frozen)
        denom = jnp.maximum(w, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        grad_norm = optax.global_norm(grads)
        loss = (ce + zl) / denom
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
        metrics = {"loss": loss, "cross_entropy": ce / denom, "z_loss": zl / denom,
                   "grad_norm": grad_norm, "target_tokens": w, "finite": finite,
                   "learning_rate": jnp.asarray(schedule(state.step), jnp.float32)}
        return new, metrics

    jitted = jax.jit(step, in_shardings=(shardings, None, frozen_shardings),
                     out_shardings=(shardings, None), donate_argnums=(0,))
    return lambda state, batch, frozen=None: jitted(state, batch, frozen)
