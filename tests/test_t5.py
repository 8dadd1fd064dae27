"""T5 v1.1 in Flax: parity with transformers on the same weights, packing, sharding, cached decoding."""
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec

from lmcor.checkpoints.hf_t5 import load_t5_safetensors, t5_config_from_hf
from lmcor.cli.gin_flags import parse_gin
from lmcor.models.partitioning import LOGICAL_AXIS_RULES, make_mesh, param_shardings
from lmcor.models.t5 import T5, T5Config, T5LM, relative_position_bucket

from _broken_checkpoints import assert_lists_every_problem, save_tampered, write_config
from _t5_params import random_t5_variables

# Few buckets and a short max distance so sequences of ~20 hit the exact, log and clamped ranges.
TINY = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_encoder_layers=2,
            num_decoder_layers=2, relative_attention_num_buckets=8,
            relative_attention_max_distance=12, dropout_rate=0.0)
ENC_LENS, DEC_LENS = (20, 13, 6), (11, 5, 8)


def _padded_ids(rng, lengths, width, start=None):
    ids = np.zeros((len(lengths), width), np.int64)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(2, TINY["vocab_size"], n)
        if start is not None:
            ids[row, 0] = start
    return ids


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=TINY["vocab_size"], d_model=TINY["d_model"], d_kv=TINY["d_kv"], d_ff=TINY["d_ff"],
        num_heads=TINY["num_heads"], num_layers=2, num_decoder_layers=2,
        relative_attention_num_buckets=TINY["relative_attention_num_buckets"],
        relative_attention_max_distance=TINY["relative_attention_max_distance"],
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    # Published v1.1 checkpoints have their own lm_head; transformers 5 ties it unless it differs.
    model.lm_head.weight = torch.nn.Parameter(0.2 * torch.randn(cfg.vocab_size, cfg.d_model))
    with torch.no_grad():  # non-unit norm scales, so a norm mapped to the wrong place shows up
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.mul_(1 + 0.5 * torch.rand_like(p))
    out = tmp_path_factory.mktemp("hf_t5")
    model.save_pretrained(out, safe_serialization=True)
    return out, model


def test_relative_position_bucket_matches_hf():
    from transformers.models.t5.modeling_t5 import T5Attention
    import torch

    rel = np.arange(-300, 300)
    for bidirectional in (True, False):
        want = T5Attention._relative_position_bucket(torch.tensor(rel), bidirectional, 32, 128).numpy()
        got = relative_position_bucket(jnp.asarray(rel), bidirectional, 32, 128)
        np.testing.assert_array_equal(np.asarray(got), want)


def test_logits_match_transformers(hf_checkpoint):
    import torch

    path, hf_model = hf_checkpoint
    rng = np.random.default_rng(0)
    enc = _padded_ids(rng, ENC_LENS, 20)
    dec = _padded_ids(rng, DEC_LENS, 11, start=0)
    dec_mask = np.arange(11)[None] < np.array(DEC_LENS)[:, None]
    with torch.no_grad():
        want = hf_model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != 0),
                        decoder_input_ids=torch.tensor(dec),
                        decoder_attention_mask=torch.tensor(dec_mask)).logits.numpy()
    assert t5_config_from_hf(path) == T5Config(**TINY)
    params = load_t5_safetensors(path)  # config read from the config.json beside the weights
    shapes = jax.eval_shape(T5(T5Config(**TINY)).init, jax.random.key(0), enc, dec)["params"]
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, nn.unbox(shapes))
    apply = jax.jit(T5(T5Config(**TINY)).apply)
    got = np.asarray(apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec)))
    assert got.dtype == np.float32
    err = np.abs(got - want)[dec_mask].max()
    assert err <= 1e-4, err


def test_mismatched_checkpoint_lists_every_problem(hf_checkpoint, tmp_path):
    path, _ = hf_checkpoint
    save_tampered(path, tmp_path, drop="decoder.block.1.layer.2.DenseReluDense.wo.weight", add={
        "encoder.block.0.layer.0.SelfAttention.q.weight": np.zeros((7, 32), np.float32),
        "encoder.block.9.layer.0.SelfAttention.q.weight": np.zeros((32, 32), np.float32)})
    assert_lists_every_problem(lambda: load_t5_safetensors(tmp_path, T5Config(**TINY)),
                               missing="decoder.block.1.layer.2.DenseReluDense.wo.weight",
                               unexpected="encoder.block.9.layer.0.SelfAttention.q.weight",
                               misshaped=("encoder.block.0.layer.0.SelfAttention.q.weight",
                                          (32, 32), (7, 32)))


def test_bad_hf_config_names_file_and_field(hf_checkpoint, tmp_path):
    path, _ = hf_checkpoint
    write_config(path, tmp_path, feed_forward_proj="relu")
    with pytest.raises(ValueError, match=r"config.json: field 'feed_forward_proj' is 'relu'"):
        t5_config_from_hf(tmp_path)
    write_config(path, tmp_path, drop=("d_model",))
    with pytest.raises(ValueError, match=r"config.json: field 'd_model' is missing"):
        load_t5_safetensors(tmp_path / "model.safetensors")


def test_checkpoint_without_lm_head_uses_the_tied_embedding(hf_checkpoint, tmp_path):
    path, _ = hf_checkpoint
    tensors = save_tampered(path, tmp_path, drop="lm_head.weight", add={})
    params = load_t5_safetensors(tmp_path / "model.safetensors", T5Config(**TINY))
    head = params["decoder"]["logits_dense"]["kernel"]
    np.testing.assert_array_equal(head, tensors["shared.weight"].T)


def _tiny_model(seed=0):
    cfg = T5Config(**TINY)
    return T5(cfg), random_t5_variables(cfg, seed)


def _right_padded(*rows):
    width = max(map(len, rows))
    return np.stack([np.pad(r, (0, width - len(r))) for r in rows])


def test_packed_examples_equal_separate_examples():
    model, variables = _tiny_model()
    rng = np.random.default_rng(1)
    (e1, e2), (d1, d2) = ([rng.integers(2, 128, n) for n in lens] for lens in ((7, 5), (4, 6)))
    d1[0] = d2[0] = 0
    apply = jax.jit(model.apply)
    alone = np.asarray(apply(variables, jnp.asarray(_right_padded(e1, e2)),
                             jnp.asarray(_right_padded(d1, d2))))
    pack = lambda a, b, w: np.concatenate([a, b, np.zeros(w - len(a) - len(b), int)])[None]  # noqa
    seg = lambda a, b, w: pack(np.ones_like(a), 2 * np.ones_like(b), w)  # noqa: E731
    pos = lambda a, b, w: pack(np.arange(len(a)), np.arange(len(b)), w)  # noqa: E731
    packed = np.asarray(apply(
        variables, jnp.asarray(pack(e1, e2, 14)), jnp.asarray(pack(d1, d2, 12)),
        encoder_segment_ids=jnp.asarray(seg(e1, e2, 14)),
        decoder_segment_ids=jnp.asarray(seg(d1, d2, 12)),
        encoder_positions=jnp.asarray(pos(e1, e2, 14)),
        decoder_positions=jnp.asarray(pos(d1, d2, 12))))[0]
    np.testing.assert_allclose(packed[:4], alone[0, :4], atol=1e-5)
    np.testing.assert_allclose(packed[4:10], alone[1], atol=1e-5)
    with pytest.raises(ValueError, match="both encoder_segment_ids and decoder_segment_ids"):
        model.apply(variables, jnp.asarray(pack(e1, e2, 14)), jnp.asarray(pack(d1, d2, 12)),
                    decoder_segment_ids=jnp.asarray(seg(d1, d2, 12)))


def test_sharded_forward_equals_single_device():
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    model, variables = _tiny_model()
    rng = np.random.default_rng(2)
    enc = jnp.asarray(_padded_ids(rng, (9, 4, 7, 2), 9))
    dec = jnp.asarray(_padded_ids(rng, (5, 3, 5, 1), 5, start=0))
    single = np.asarray(jax.jit(model.apply)(nn.unbox(variables), enc, dec))

    mesh = make_mesh(4, 2)
    shardings = param_shardings(variables, mesh)
    mlp_spec = shardings["params"]["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].spec
    assert mlp_spec == PartitionSpec(None, "model")  # the test is vacuous if nothing is split
    sharded_vars = jax.device_put(nn.unbox(variables), shardings)
    batch = NamedSharding(mesh, PartitionSpec("data"))
    # jax.set_mesh (not `with mesh:`) is what makes the logical activation constraints take effect.
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        out = jax.jit(model.apply)(sharded_vars, jax.device_put(enc, batch), jax.device_put(dec, batch))
    assert out.sharding.spec[0] == "data"
    np.testing.assert_allclose(np.asarray(out), single, atol=1e-5)


def test_cached_steps_equal_full_decoder_forward():
    model, variables = _tiny_model(seed=3)
    rng = np.random.default_rng(3)
    enc = jnp.asarray(_padded_ids(rng, (8, 3, 5), 8))
    targets = rng.integers(2, 128, (3, 6))
    dec = jnp.asarray(np.concatenate([np.zeros((3, 1), int), targets[:, :-1]], axis=1))
    full = np.asarray(jax.jit(model.apply)(variables, enc, dec))
    lm = T5LM(model.config)
    assert (lm.eos_id, lm.pad_id, lm.vocab_size) == (1, 0, 128)
    with pytest.raises(ValueError, match="encoder_tokens"):
        lm.prefill(variables["params"], {"tokens": enc}, 6)
    prefill = jax.jit(lm.prefill, static_argnums=2)
    logits, cache = prefill(variables["params"], {"encoder_tokens": enc}, 6)
    assert all(leaf.shape[0] == 3 for leaf in jax.tree.leaves(cache))
    step = jax.jit(lm.step)
    got = [np.asarray(logits)]
    for t in range(5):
        logits, cache = step(variables["params"], jnp.asarray(targets[:, t], jnp.int32), cache)
        got.append(np.asarray(logits))
    np.testing.assert_allclose(np.stack(got, axis=1), full, atol=1e-4)


def test_remat_changes_neither_params_nor_gradients():
    # Dropout on, so the recomputed forward must also redraw the same dropout masks.
    small = dict(TINY, num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.2)
    model, remat = (T5(T5Config(**small, remat=r)) for r in (False, True))
    enc, dec = jnp.asarray([[5, 6, 7, 0]]), jnp.asarray([[0, 5, 6]])
    variables = random_t5_variables(model.config)
    loss = lambda m: lambda v: m.apply(v, enc, dec, deterministic=False,  # noqa: E731
                                       rngs={"dropout": jax.random.key(1)}).sum()
    plain_grads = jax.jit(jax.grad(loss(model)))(variables)
    remat_grads = jax.jit(jax.grad(loss(remat)))(variables)  # same tree: remat keeps param paths
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), nn.unbox(plain_grads),
                 nn.unbox(remat_grads))


def test_presets_and_dtypes():
    base = T5Config.preset("base")
    assert (base.d_model, base.d_ff, base.num_heads, base.num_encoder_layers, base.vocab_size) == \
        (768, 2048, 12, 12, 32128)
    xxl = T5Config.preset("xxl", dtype="bfloat16")
    assert (xxl.d_model, xxl.d_ff, xxl.num_heads, xxl.dtype) == (4096, 10240, 64, jnp.bfloat16)
    with pytest.raises(ValueError, match="unknown T5 preset"):
        T5Config.preset("huge")
    cfg = T5Config(**{**TINY, "dtype": "bfloat16"})
    model, enc, dec = T5(cfg), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 3), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), enc, dec)
    assert {x.dtype for x in jax.tree.leaves(nn.unbox(abstract))} == {jnp.dtype(jnp.float32)}
    variables = random_t5_variables(cfg)
    assert jax.jit(model.apply)(variables, enc, dec).dtype == jnp.float32


@gin.configurable(module="tests.test_t5")
def _consumes_model_config(config=None):
    return config


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large", "xl"])
def test_gin_model_files_bind_the_preset(size):
    gin.clear_config()
    try:
        parse_gin([f"models/t5_1_1_{size}.gin"],
                  ['t5_config.dtype = "bfloat16"',
                   "tests.test_t5._consumes_model_config.config = %MODEL_CONFIG"], finalize=False)
        got = _consumes_model_config()
    finally:
        gin.clear_config()
    assert got == T5Config.preset(size, dtype=jnp.bfloat16)
