"""The sharded train step: mesh equivalence, gradient accumulation, loss terms, non-finite
guard. Runs in-process on the 8 fake CPU devices that conftest.py configures."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from lmcor.models import partitioning
from lmcor.training import batches, state as state_lib, step as step_lib
from lmcor.training.builders import t5_model
from _train_worker import reverse_arrays


@pytest.fixture(scope="module")
def params():
    """Random params drawn once in numpy: XLA compiles the model's RNG-heavy init slowly on CPU."""
    from flax import linen as nn
    rng = np.random.default_rng(0)
    shapes = nn.unbox(jax.eval_shape(t5_model(preset="tiny").init_fn, jax.random.PRNGKey(0)))
    return jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype), shapes)


def _state(mesh, params, optimizer="adafactor", lr=0.01):
    model = t5_model(preset="tiny")
    schedule = state_lib.make_schedule("constant", lr)
    opt = state_lib.make_optimizer(schedule, name=optimizer)
    state, sh = state_lib.create_state(model.init_fn, opt, mesh, 0, model.rules, init_params=params)
    return model, schedule, opt, state, sh


def _run(mesh, params, steps, batch_size=8, k=1):
    model, schedule, opt, state, sh = _state(mesh, params)
    step_fn = step_lib.make_train_step(model.loss_inputs, opt, schedule, sh, mesh,
                                       num_microbatches=k)
    source = batches.BatchSource({0: reverse_arrays(64)}, 1, batch_size, seed=0)
    losses = []
    with jax.set_mesh(mesh):
        for s in range(steps):
            batch = jax.device_put(source.batch(s), NamedSharding(mesh, PartitionSpec("data")))
            state, metrics = step_fn(state, batch)
            losses.append(float(metrics["loss"]))
    return np.asarray(losses), state


def test_mesh_4x2_matches_single_device(params):
    single, s1 = _run(partitioning.make_mesh(1, 1, jax.devices()[:1]), params, steps=20)
    sharded, s8 = _run(partitioning.make_mesh(4, 2), params, steps=20)
    assert single[-1] < single[0] - 0.5  # it actually trains
    np.testing.assert_allclose(sharded, single, rtol=1e-4)
    # The state really is split: some param and its Adafactor moments live on the model axis.
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(s8.params)}
    assert any("model" in s for s in specs)
    opt_specs = {str(x.sharding.spec) for x in jax.tree.leaves(s8.opt_state)}
    assert any("model" in s for s in opt_specs)


def test_fsdp_rules_shard_params_over_data(params):
    mesh = partitioning.make_mesh(4, 2)
    model = t5_model(preset="tiny", fsdp=True)
    opt = state_lib.make_optimizer(state_lib.make_schedule())
    state, _ = state_lib.create_state(model.init_fn, opt, mesh, 0, model.rules, init_params=params)
    specs = [x.sharding.spec for x in jax.tree.leaves(state.params)]
    assert any("data" in str(s) for s in specs)


def test_gradient_accumulation_equals_big_batch(params):
    mesh = partitioning.make_mesh(4, 2)
    model, _, _, state, _ = _state(mesh, params)
    batch = {k: jnp.asarray(v) for k, v in
             batches.BatchSource({0: reverse_arrays(64)}, 1, 16, 0).batch(0).items()}
    with jax.set_mesh(mesh):
        g1, (ce1, _, w1) = jax.jit(lambda p, b: step_lib.accumulate_grads(
            model.loss_inputs, p, b, None, 1, mesh))(state.params, batch)
        g4, (ce4, _, w4) = jax.jit(lambda p, b: step_lib.accumulate_grads(
            model.loss_inputs, p, b, None, 4, mesh))(state.params, batch)
    assert float(w1) == float(w4) > 0
    np.testing.assert_allclose(float(ce4), float(ce1), rtol=1e-5)
    # Summation order differs, so compare each tensor against its own scale.
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(b - a).max() <= 1e-5 * max(np.abs(a).max(), 1e-12)


def _reference_terms(logits, targets, weights, ls, zl):
    """Straight numpy: smoothed targets q, loss = KL(q || p) summed with weights (the constant
    entropy of q subtracted, so a one-hot prediction of the clean label costs ~0)."""
    logits = np.asarray(logits, np.float64)
    v = logits.shape[-1]
    log_z = np.log(np.exp(logits).sum(-1))
    logp = logits - log_z[..., None]
    q = np.full(logits.shape, ls / (v - 1))
    np.put_along_axis(q, targets[..., None], 1 - ls, axis=-1)
    kl = (q * (np.log(np.where(q > 0, q, 1)) - logp)).sum(-1)
    return (kl * weights).sum(), (zl * log_z ** 2 * weights).sum()


@pytest.mark.parametrize("ls,zl", [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-4), (0.2, 1e-3)])
def test_loss_terms_match_reference(ls, zl):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, (2, 5))
    weights = (rng.random((2, 5)) > 0.3).astype(np.float32)
    ce, z, w = step_lib.token_losses(jnp.asarray(logits), jnp.asarray(targets),
                                     jnp.asarray(weights), label_smoothing=ls, z_loss=zl)
    ref_ce, ref_z = _reference_terms(logits, targets, weights, ls, zl)
    assert float(w) == weights.sum()
    np.testing.assert_allclose(float(ce), ref_ce, rtol=1e-5)
    np.testing.assert_allclose(float(z), ref_z, rtol=1e-5)


def test_non_finite_step_keeps_the_old_state(params):
    mesh = partitioning.make_mesh(1, 1, jax.devices()[:1])
    model, schedule, opt, state, sh = _state(mesh, params)
    before = jax.tree.map(np.asarray, state.params)
    batch = batches.BatchSource({0: reverse_arrays(16)}, 1, 4, 0).batch(0)
    batch["decoder_loss_weights"][0, 0] = np.nan
    step_fn = step_lib.make_train_step(model.loss_inputs, opt, schedule, sh, mesh)
    with jax.set_mesh(mesh):
        new, metrics = step_fn(state, jax.device_put(batch))
    assert not bool(metrics["finite"])
    assert int(new.step) == 0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(new.params)):
        np.testing.assert_array_equal(np.asarray(b), a)
