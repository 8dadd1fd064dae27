"""Cheaper corrector fine-tuning: LoRA adapters, frozen embeddings and layers, the frozen-layer
cache, and the task vocabulary, on a tiny random Gemma 3 (mechanics) and in the trainer."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from lmcor.data.task_vocab import TaskVocab
from lmcor.training import peft
from lmcor.training import batches
from lmcor.training.builders import gemma_model


def _random_base(seed=0):
    model = gemma_model(preset="tiny")
    rng = np.random.default_rng(seed)
    shapes = nn.unbox(jax.eval_shape(model.init_fn, jax.random.PRNGKey(0)))
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), s.dtype), shapes)


def _with_base(model, base):
    return dataclasses.replace(model, pretrained_params=base)


def _batch(seed=0, rows=2, length=12, vocab=500):
    toks = np.random.default_rng(seed).integers(4, vocab, (rows, length)).astype(np.int32)
    weights = np.zeros((rows, length), np.float32)
    weights[:, length // 2:] = 1
    return {"decoder_input_tokens": toks, "decoder_target_tokens": np.roll(toks, -1, 1),
            "decoder_loss_weights": weights}


def _mesh():
    return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))


def test_lora_product_gradients_equal_autodiff_of_the_plain_formula():
    # lmcor.models.xla_tuning.lora_product writes its backward pass by hand (for speed on XLA
    # CPU); it must give what autodiff of (x a) b gives, for every operand.
    from lmcor.models.xla_tuning import lora_product
    rng = np.random.default_rng(3)
    x, a, b, w = (jnp.asarray(rng.normal(size=s), jnp.float32)
                  for s in [(10, 6), (6, 3), (3, 5), (10, 5)])
    def plain(x, a, b):
        return jnp.sum(((x @ a) @ b) * w)
    def custom(x, a, b):
        return jnp.sum(lora_product(x, a, b) * w)
    np.testing.assert_allclose(np.asarray(lora_product(x, a, b)), np.asarray((x @ a) @ b),
                               rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.grad(custom, argnums=(0, 1, 2))(x, a, b),
                         jax.grad(plain, argnums=(0, 1, 2))(x, a, b)):
        assert got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_fresh_adapters_give_exactly_the_base_logits():
    base = _random_base()
    full = _with_base(gemma_model(preset="tiny"), base)
    lora = _with_base(gemma_model(preset="tiny", lora_rank=4), base)
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    trainable = lora.load_pretrained()
    frozen, _ = lora.place_frozen(_mesh())
    want = full.logits_fn(base, batch)
    got, _, _ = lora.loss_inputs(trainable, batch, None, frozen)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # Nonzero adapters change the logits, and merging them into the kernels keeps them.
    bumped = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.05 if p[-1].key == "lora_b" else x, trainable)
    adapted, _, _ = lora.loss_inputs(bumped, batch, None, frozen)
    assert float(jnp.max(jnp.abs(adapted - want))) > 1e-3
    merged = lora.decode_params(bumped)
    assert not any("lora" in str(p) for p, _ in jax.tree_util.tree_flatten_with_path(merged)[0])
    np.testing.assert_allclose(np.asarray(full.logits_fn(merged, batch)), np.asarray(adapted),
                               atol=1e-4)


def test_only_what_trains_is_in_the_state():
    base = _random_base()
    model = _with_base(gemma_model(preset="tiny", lora_rank=2, freeze_embeddings=True,
                                   freeze_layers=3), base)
    paths = ["/".join(str(getattr(k, "key", k)) for k in p)
             for p, _ in jax.tree_util.tree_flatten_with_path(model.load_pretrained())[0]]
    assert paths and all(p.endswith(("lora_a", "lora_b")) for p in paths)
    assert not any(p.startswith(("layers_0/", "layers_1/", "layers_2/")) for p in paths)
    assert any(p.startswith("layers_3/") for p in paths)
    # Without LoRA, freezing the lowest layers and the embedding trains the rest in full.
    partial = _with_base(gemma_model(preset="tiny", freeze_embeddings=True, freeze_layers=5),
                         base)
    keys = set(partial.load_pretrained())
    assert keys == {"layers_5", "layers_6", "final_norm"}


def test_the_frozen_cache_path_equals_the_full_forward():
    base = _random_base()
    model = _with_base(gemma_model(preset="tiny", lora_rank=2, freeze_embeddings=True,
                                   freeze_layers=3, cache_frozen=True), base)
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    trainable = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.05 if p[-1].key == "lora_b" else x, model.load_pretrained())
    frozen, _ = model.place_frozen(_mesh())
    want, _, _ = model.loss_inputs(trainable, batch, None, frozen)
    hidden = model.prefix_fn(frozen, batch)
    got, _, _ = model.loss_inputs(trainable, dict(batch, frozen_hidden=hidden), None, frozen)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="cache_frozen needs"):
        gemma_model(preset="tiny", freeze_layers=2, cache_frozen=True)
    with pytest.raises(ValueError, match="freeze_layers"):
        gemma_model(preset="tiny", freeze_layers=99)
    with pytest.raises(ValueError, match="lora_targets"):
        gemma_model(preset="tiny", lora_rank=2, lora_targets=("q_proj",))
    with pytest.raises(ValueError, match="vocab"):
        gemma_model(preset="tiny", vocab="tiny")


def test_task_vocabulary_maps_and_counts():
    vocab = TaskVocab.from_token_arrays([np.array([[5, 9, 0], [9, 12, 1]])], 20)
    assert vocab.ids.tolist() == [0, 1, 2, 3, 5, 9, 12]
    np.testing.assert_array_equal(vocab.to_task([0, 5, 12, 7, 2]), [0, 4, 6, 3, 2])
    assert vocab.oov_report() == {"tokens": 4, "oov": 1, "oov_rate": 0.25}
    np.testing.assert_array_equal(vocab.to_full(vocab.to_task([1, 9, 12], count=False)),
                                  [1, 9, 12])


def test_task_vocabulary_saves_and_refuses_a_tampered_file(tmp_path):
    vocab = TaskVocab([7, 11], 64)
    vocab.save(str(tmp_path), {"file": "x", "sha256": "0" * 64})
    assert TaskVocab.load(str(tmp_path)).ids.tolist() == vocab.ids.tolist()
    data = json.loads((tmp_path / "task_vocab.json").read_text())
    data["ids"].append(13)
    (tmp_path / "task_vocab.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="sha256"):
        TaskVocab.load(str(tmp_path))


def test_task_vocab_model_logits_equal_the_full_model_at_kept_ids():
    base = _random_base()
    full = _with_base(gemma_model(preset="tiny"), base)
    batch = _batch(vocab=100)
    source = batches.BatchSource({0: {k: v.copy() for k, v in batch.items()}}, 1, 2, 0)
    model = _with_base(gemma_model(preset="tiny", vocab="task"), base)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        model = model.prepare(d, source)
        assert TaskVocab.load(d).ids.tolist() == model.task_vocab.ids.tolist()
    ids = model.task_vocab.ids
    assert model.config.vocab_size == len(ids) < 100
    compact = source.batch(0)
    np.testing.assert_array_equal(model.task_vocab.to_full(compact["decoder_input_tokens"]),
                                  batch["decoder_input_tokens"])
    want = np.asarray(full.logits_fn(base, {k: jnp.asarray(v) for k, v in batch.items()}))
    got = np.asarray(model.logits_fn(model.pretrained_params,
                                     {k: jnp.asarray(v) for k, v in compact.items()}))
    np.testing.assert_allclose(got, want[..., ids], atol=1e-5)


def test_base_weights_of_another_file_are_refused(tmp_path):
    peft.record_base(str(tmp_path), {"file": "a.gguf", "sha256": "a" * 64, "bytes": 1})
    peft.check_base(str(tmp_path), {"file": "a.gguf", "sha256": "a" * 64, "bytes": 1})
    with pytest.raises(peft.BaseWeightsMismatch, match="b.gguf"):
        peft.check_base(str(tmp_path), {"file": "b.gguf", "sha256": "b" * 64, "bytes": 1})
    assert json.loads((tmp_path / "base_weights.json").read_text())["file"] == "a.gguf"
    assert os.path.getsize(tmp_path / "base_weights.json") > 0


def test_export_puts_a_task_embedding_back_into_the_full_table(tmp_path):
    from lmcor.inference.export import full_vocab_params

    base = _random_base()
    batch = _batch(vocab=100)
    source = batches.BatchSource({0: {k: v.copy() for k, v in batch.items()}}, 1, 2, 0)
    full = _with_base(gemma_model(preset="tiny", lora_rank=2), base)
    model = _with_base(gemma_model(preset="tiny", lora_rank=2, vocab="task"), base)
    model = model.prepare(str(tmp_path), source)
    trained = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.05 if p[-1].key in ("lora_b", "embedding") else x,
        model.load_pretrained())
    params, config = full_vocab_params(model, full, trained)
    assert config.vocab_size == 512 and config.lora_rank == 0
    table, ids = np.asarray(params["embedder"]["embedding"]), model.task_vocab.ids
    np.testing.assert_allclose(table[ids], np.asarray(base["embedder"]["embedding"])[ids] + 0.05,
                               atol=1e-6)
    others = np.setdiff1d(np.arange(512), ids)
    np.testing.assert_array_equal(table[others], np.asarray(base["embedder"]["embedding"])[others])
    # At the kept ids, the exported model computes what the trained compact model computes.
    plain = gemma_model(preset="tiny")
    frozen, _ = model.place_frozen(_mesh())
    compact = {k: jnp.asarray(v) for k, v in source.batch(0).items()}
    want, _, _ = model.loss_inputs(trained, compact, None, frozen)
    got = plain.logits_fn(params, {k: jnp.asarray(v) for k, v in batch.items()})
    np.testing.assert_allclose(np.asarray(got)[..., ids], np.asarray(want), atol=1e-4)


def test_frozen_cache_fills_once_and_never_serves_other_rows(tmp_path):
    from lmcor.training import frozen_cache
    from lmcor.training.loop import _global_batch

    base = _random_base()
    model = _with_base(gemma_model(preset="tiny", lora_rank=2, freeze_embeddings=True,
                                   freeze_layers=3, cache_frozen=True), base)
    mesh = _mesh()
    frozen, _ = model.place_frozen(mesh)

    def source(seed):
        return batches.BatchSource({0: _batch(seed, rows=4)}, 1, 2, 0, shuffle=False)

    a = source(0)
    cache = frozen_cache.FrozenCache(model, str(tmp_path), a, frozen, mesh)
    for step in range(2):
        batch = _global_batch(a.batch(step), mesh)
        got = np.asarray(cache.hidden(a.row_ids(step), batch), np.float32)
        want = np.asarray(model.prefix_fn(frozen, batch), np.float32)
        np.testing.assert_allclose(got, want, rtol=2 ** -7, atol=1e-6)  # bfloat16 rounding
    assert cache.filled == 4 and cache.fraction_done() == 1.0
    # A new process on the same rows reads the states back instead of computing them.
    again = frozen_cache.FrozenCache(model, str(tmp_path), a, frozen, mesh)
    again.hidden(a.row_ids(0), _global_batch(a.batch(0), mesh))
    assert again.filled == 0
    # Other rows get another file, not the first one's states.
    b = source(1)
    other = frozen_cache.FrozenCache(model, str(tmp_path), b, frozen, mesh)
    assert other.path != cache.path and other.fraction_done() == 0.0
