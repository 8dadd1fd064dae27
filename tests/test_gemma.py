"""Gemma 3 in Flax against transformers' Gemma3ForCausalLM on the same (tiny, random) weights,
plus the mechanics that have no reference: sharding, the KV cache, checkpoint errors."""
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from lmcor.checkpoints.hf_gemma import load_gemma_safetensors
from lmcor.models import partitioning
from lmcor.models.gemma import GLOBAL, LOCAL, Gemma3, GemmaConfig, GemmaLM

from _broken_checkpoints import assert_lists_every_problem, save_tampered, write_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LAYER_TYPES = [LOCAL, LOCAL, GLOBAL, LOCAL, LOCAL, GLOBAL, LOCAL]


def _small_config():
    # Mechanics tests need both layer kinds, not depth; fewer layers compile much faster.
    return GemmaConfig.preset("tiny", num_layers=3, layer_types=(LOCAL, GLOBAL, LOCAL))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random 7-layer Gemma 3 (window 4 < sequence) saved by transformers as safetensors."""
    cfg = transformers.Gemma3TextConfig(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=7,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
        sliding_window=4, max_position_embeddings=64, layer_types=LAYER_TYPES,
        rope_parameters={GLOBAL: {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                         LOCAL: {"rope_type": "default", "rope_theta": 1e4}})
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():  # HF initialises norms to 0 (= scale 1); random ones test the (1 + w)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.5)
    path = tmp_path_factory.mktemp("gemma_tiny")
    model.save_pretrained(path)
    return path, model


def _hf_logits(model, ids, mask, positions):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions))
    return out.logits.numpy()


def _padded_batch(rng, vocab, length, lengths, left):
    ids = np.zeros((len(lengths), length), np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        cols = slice(length - n, length) if left else slice(0, n)
        ids[row, cols] = rng.integers(3, vocab, n)
        mask[row, cols] = 1
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return ids, mask, positions


@pytest.mark.parametrize("left", [False, True], ids=["right_padded", "left_padded"])
def test_logits_match_transformers(hf_dir, left):
    path, model = hf_dir
    config, params = load_gemma_safetensors(str(path))
    assert [config.layer_type(i) for i in range(7)] == LAYER_TYPES
    assert config.rope_global_scaling == 4.0 and config.query_pre_attn_scalar == 24
    ids, mask, positions = _padded_batch(np.random.default_rng(1), 256, 12, [12, 9, 5], left)
    want = _hf_logits(model, ids, mask, positions)
    got = Gemma3(config).apply({"params": params}, jnp.asarray(ids, jnp.int32),
                               positions=jnp.asarray(positions), segment_ids=jnp.asarray(mask))
    valid = mask.astype(bool)
    err = np.abs(np.asarray(got)[valid] - want[valid]).max()
    assert err <= 1e-4, err
    assert np.abs(want[valid]).max() > 0.1  # logits are not trivially tiny


def test_sharded_forward_equals_single_device():
    config = _small_config()
    model = Gemma3(config)
    tokens = jax.random.randint(jax.random.key(0), (8, 10), 1, config.vocab_size)
    boxed = jax.jit(model.init)(jax.random.key(1), tokens)
    params = nn.unbox(boxed)
    want = jax.jit(model.apply)(params, tokens)
    mesh = partitioning.make_mesh(data=4, model=2)
    shardings = partitioning.param_shardings(boxed, mesh)
    assert shardings["params"]["embedder"]["embedding"].spec == jax.sharding.PartitionSpec(
        "model", None)
    sharded = jax.device_put(params, shardings)
    with mesh, nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
        batch_sharding = partitioning.logical_to_sharding(
            jax.sharding.PartitionSpec("batch", "length"), tokens, mesh)
        got = jax.jit(model.apply)(sharded, jax.device_put(tokens, batch_sharding))
    assert len(got.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


def test_cached_decode_equals_uncached_forward():
    # Window 4 with 13 positions: sliding layers must drop old cache slots exactly as the
    # uncached mask does, for rows whose left padding differs.
    config = _small_config()
    model = Gemma3(config)
    lm = GemmaLM(model)
    rng = np.random.default_rng(2)
    ids, mask, _ = _padded_batch(rng, config.vocab_size, 6, [6, 3], left=True)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(3), jnp.asarray(ids, jnp.int32)))["params"]
    steps = 7
    logits, cache = lm.prefill(params, {"tokens": ids.astype(np.int32), "mask": mask > 0}, steps)
    seq, seq_mask, got = ids, mask, [np.asarray(logits)]
    for _ in range(steps):
        nxt = np.asarray(jnp.argmax(got[-1], axis=-1), np.int64)
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
        seq_mask = np.concatenate([seq_mask, np.ones_like(nxt)[:, None]], axis=1)
        logits, cache = lm.step(params, nxt.astype(np.int32), cache)
        got.append(np.asarray(logits))
    positions = np.maximum(np.cumsum(seq_mask, axis=1) - 1, 0)
    full = jax.jit(model.apply)({"params": params}, jnp.asarray(seq, jnp.int32),
                       positions=jnp.asarray(positions), segment_ids=jnp.asarray(seq_mask))
    want = np.asarray(full)[:, ids.shape[1] - 1:]
    np.testing.assert_allclose(np.stack(got, axis=1), want, atol=1e-5, rtol=0)
    assert all(leaf.shape[0] == 2 for leaf in jax.tree.leaves(cache))


def test_checkpoint_mismatch_lists_every_tensor(hf_dir, tmp_path):
    path, _ = hf_dir
    save_tampered(path, tmp_path, drop="model.layers.3.mlp.up_proj.weight",
                  add={"model.layers.9.self_attn.q_proj.weight": np.zeros((4, 4), np.float32),
                       "model.norm.weight": np.zeros((63,), np.float32)})
    shutil.copy(path / "config.json", tmp_path / "config.json")
    assert_lists_every_problem(lambda: load_gemma_safetensors(str(tmp_path)),
                               missing="model.layers.3.mlp.up_proj.weight",
                               unexpected="model.layers.9.self_attn.q_proj.weight",
                               misshaped=("model.norm.weight", (64,), (63,)))


def test_bad_config_names_file_and_field(hf_dir, tmp_path):
    path, _ = hf_dir
    write_config(path, tmp_path, drop=("num_key_value_heads",))
    with pytest.raises(ValueError, match=r"config.json: missing field num_key_value_heads"):
        load_gemma_safetensors(str(tmp_path))


def test_presets_follow_published_configs():
    assert GemmaConfig.preset("270m").layer_type(5) == GLOBAL
    assert GemmaConfig.preset("270m").layer_type(4) == LOCAL
    big = GemmaConfig.preset("27b")
    assert (big.head_dim, big.query_pre_attn_scalar, big.rope_global_scaling) == (128, 168, 8.0)
    with pytest.raises(ValueError, match="unknown Gemma preset"):
        GemmaConfig.preset("2b")


@pytest.mark.parametrize("name", ["270m", "1b"])
def test_gin_files_bind_presets(name):
    import gin

    path = partitioning.__file__.rsplit("/lmcor/", 1)[0] + f"/gin/models/gemma3_{name}.gin"
    with gin.unlock_config():
        gin.clear_config()
        gin.parse_config_file(path)
        config = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
        gin.clear_config()
    assert config == GemmaConfig.preset(name)
