"""int8 decoding (`GemmaConfig.quantize="int8"`): the stored layout, the error it adds, and that
the cache and sharding mechanics hold for quantized params as they do for float ones."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from lmcor.sampling.backends.jax_lm import JaxBackend
from lmcor.models import partitioning
from lmcor.models.gemma import GLOBAL, LOCAL, Gemma3, GemmaConfig, GemmaLM, quantize_params


def _configs():
    float_cfg = GemmaConfig.preset("tiny", num_layers=3, layer_types=(LOCAL, GLOBAL, LOCAL))
    return float_cfg, GemmaConfig.preset("tiny", num_layers=3, layer_types=(LOCAL, GLOBAL, LOCAL),
                                         quantize="int8")


@pytest.fixture(scope="module")
def tiny():
    float_cfg, q_cfg = _configs()
    tokens = jax.random.randint(jax.random.key(0), (4, 12), 1, float_cfg.vocab_size)
    params = nn.unbox(jax.jit(Gemma3(float_cfg).init)(jax.random.key(1), tokens))["params"]
    return float_cfg, q_cfg, params, quantize_params(q_cfg, params), tokens


def _leaves_named(tree, name, path=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves_named(value, name, path + (key,))
        elif key == name:
            yield path, tree


def test_every_weight_dequantizes_to_within_half_a_step(tiny):
    _, _, params, qparams, _ = tiny
    kernels = list(_leaves_named(params, "kernel"))
    assert len(kernels) == 3 * 7  # q, k, v, o, gate, up, down per layer
    for path, node in kernels:
        q = qparams
        for key in path:
            q = q[key]
        w = np.asarray(node["kernel"], np.float32)
        assert q["kernel"].dtype == jnp.int8 and q["kernel_scale"].dtype == jnp.float32
        scale = np.asarray(q["kernel_scale"])
        # Stored as one [out, in] matrix; back to the float layout [in..., out...].
        back = (np.asarray(q["kernel"], np.float32) * scale[:, None]).T.reshape(w.shape)
        assert back.shape == w.shape
        step = np.broadcast_to(scale, (math.prod(w.shape) // scale.size, scale.size)).reshape(
            w.shape)
        assert np.all(np.abs(back - w) <= step / 2 + 1e-7), path
    emb, q_emb = np.asarray(params["embedder"]["embedding"]), qparams["embedder"]
    scale = np.asarray(q_emb["embedding_scale"])[:, None]
    assert np.all(np.abs(np.asarray(q_emb["embedding"], np.float32) * scale - emb)
                  <= scale / 2 + 1e-7)


def test_quantized_logits_track_float_logits(tiny):
    float_cfg, q_cfg, params, qparams, tokens = tiny
    want = np.asarray(jax.jit(Gemma3(float_cfg).apply)({"params": params}, tokens))
    got = np.asarray(jax.jit(Gemma3(q_cfg).apply)({"params": qparams}, tokens))
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert 0 < rel < 0.05, rel  # changed by the rounding, but only by it
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999


def test_quantized_cached_decode_equals_uncached_forward(tiny):
    _, q_cfg, _, qparams, _ = tiny
    model, lm = Gemma3(q_cfg), GemmaLM(q_cfg)
    ids = np.asarray(jax.random.randint(jax.random.key(2), (2, 6), 1, q_cfg.vocab_size))
    mask = np.ones_like(ids, bool)
    mask[1, :3] = False  # left padding
    logits, cache = lm.prefill(qparams, {"tokens": ids.astype(np.int32), "mask": mask}, 5)
    seq, seq_mask, got = ids, mask, [np.asarray(logits)]
    for _ in range(5):
        nxt = np.asarray(jnp.argmax(got[-1], axis=-1), np.int32)
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
        seq_mask = np.concatenate([seq_mask, np.ones((2, 1), bool)], axis=1)
        logits, cache = lm.step(qparams, nxt, cache)
        got.append(np.asarray(logits))
    positions = np.maximum(np.cumsum(seq_mask, axis=1) - 1, 0)
    full = jax.jit(model.apply)({"params": qparams}, jnp.asarray(seq, jnp.int32),
                                positions=jnp.asarray(positions),
                                segment_ids=jnp.asarray(seq_mask, jnp.int32))
    np.testing.assert_allclose(np.stack(got, axis=1), np.asarray(full)[:, ids.shape[1] - 1:],
                               atol=1e-4, rtol=0)


def test_sharded_quantized_forward_matches_single_device(tiny):
    float_cfg, q_cfg, params, qparams, tokens = tiny
    model = Gemma3(q_cfg)
    want = np.asarray(jax.jit(model.apply)({"params": qparams}, tokens))
    mesh = partitioning.make_mesh(data=4, model=2)
    boxed = jax.eval_shape(model.init, jax.random.key(0), tokens)
    shardings = partitioning.param_shardings(boxed, mesh)["params"]
    assert shardings["embedder"]["embedding"].spec == jax.sharding.PartitionSpec("model", None)
    assert shardings["layers_0"]["attn"]["q"]["kernel"].spec == jax.sharding.PartitionSpec(
        "model", None)  # [heads * head_dim, embed]: split by head
    with mesh, nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
        got = np.asarray(jax.jit(model.apply)({"params": jax.device_put(qparams, shardings)},
                                              tokens))
    # Not equal to 1e-5 as float params are: a last-bit difference from the sharded reduction
    # order can flip an activation's int8 rounding, and later layers carry that on. So the
    # check is that sharding moves the logits less than quantizing did.
    float_logits = np.asarray(jax.jit(Gemma3(float_cfg).apply)({"params": params}, tokens))
    assert np.abs(got - want).max() < 0.5 * np.abs(want - float_logits).max()
    assert np.corrcoef(got.ravel(), float_logits.ravel())[0, 1] > 0.999


def test_bad_quantize_settings_fail_clearly(tiny):
    float_cfg, _, params, _, _ = tiny
    with pytest.raises(ValueError, match="quantize must be None or 'int8'"):
        GemmaConfig.preset("tiny", quantize="int4")
    with pytest.raises(ValueError, match="quantize='int8'"):
        quantize_params(float_cfg, params)
    with pytest.raises(ValueError, match="JaxBackend.quantize"):
        JaxBackend(quantize="fp8")
