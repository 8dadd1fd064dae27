"""The trainer's model adapters: packed batches give the same loss as unpacked ones (encoder-
decoder and decoder-only prefix-LM, loss on the target only), bf16 compute, and starting from
HF T5 safetensors with a first loss equal to transformers' own."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmcor.training import step as step_lib
from lmcor.training.builders import gemma_model, t5_model


def _loss(model, params, batch):
    logits = jax.jit(model.logits_fn)(params, {k: jnp.asarray(v) for k, v in batch.items()})
    ce, _, w = step_lib.token_losses(logits, jnp.asarray(batch["decoder_target_tokens"]),
                                     jnp.asarray(batch["decoder_loss_weights"]))
    return float(ce), float(w)


def _init(model, seed=0):
    """Random params drawn in numpy: XLA compiles a model's RNG-heavy init slowly on CPU."""
    from flax import linen as nn
    rng = np.random.default_rng(seed)
    shapes = nn.unbox(jax.eval_shape(model.init_fn, jax.random.PRNGKey(0)))
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), s.dtype), shapes)


def _pack(rows, length):
    """Concatenates examples into one row with segment ids 1..n and per-segment positions."""
    out = {k: np.zeros((1, length), rows[0][k].dtype) for k in rows[0]}
    seg = np.zeros((1, length), np.int32)
    pos = np.zeros((1, length), np.int32)
    at = 0
    for i, r in enumerate(rows):
        n = len(r["decoder_target_tokens"])
        for k in r:
            out[k][0, at:at + n] = r[k]
        seg[0, at:at + n], pos[0, at:at + n] = i + 1, np.arange(n)
        at += n
    return out, seg, pos


def test_encdec_packing_matches_separate_examples():
    model = t5_model(preset="tiny")
    params = _init(model)
    rng = np.random.default_rng(0)
    exs = []
    for n_in, n_out in ((5, 4), (7, 3)):
        tgt = rng.integers(2, 256, n_out).astype(np.int32)
        exs.append({"enc": rng.integers(2, 256, n_in).astype(np.int32), "tgt": tgt,
                    "inp": np.concatenate([[0], tgt[:-1]]).astype(np.int32)})
    separate = [0.0, 0.0]
    for e in exs:
        ce, w = _loss(model, params, {
            "encoder_input_tokens": e["enc"][None], "decoder_input_tokens": e["inp"][None],
            "decoder_target_tokens": e["tgt"][None],
            "decoder_loss_weights": np.ones((1, len(e["tgt"])), np.float32)})
        separate = [separate[0] + ce, separate[1] + w]
    dec, dseg, dpos = _pack([{"decoder_target_tokens": e["tgt"], "decoder_input_tokens": e["inp"],
                              "decoder_loss_weights": np.ones(len(e["tgt"]), np.float32)}
                             for e in exs], 10)
    enc, eseg, epos = _pack([{"decoder_target_tokens": e["enc"]} for e in exs], 14)
    packed = dict(dec, encoder_input_tokens=enc["decoder_target_tokens"], encoder_segment_ids=eseg,
                  encoder_positions=epos, decoder_segment_ids=dseg, decoder_positions=dpos)
    ce, w = _loss(model, params, packed)
    assert w == separate[1]
    np.testing.assert_allclose(ce, separate[0], rtol=1e-5)


def _prefix_lm_row(rng, n_prefix, n_target, vocab):
    toks = rng.integers(3, vocab, n_prefix + n_target).astype(np.int32)
    return {"decoder_target_tokens": toks,
            "decoder_input_tokens": np.concatenate([[2], toks[:-1]]).astype(np.int32),
            "decoder_loss_weights": np.r_[np.zeros(n_prefix), np.ones(n_target)].astype(np.float32)}


def test_decoder_only_prefix_lm_packing_and_target_only_loss():
    model = gemma_model(preset="tiny")
    params = _init(model)
    vocab = model.config.vocab_size
    rng = np.random.default_rng(1)
    rows = [_prefix_lm_row(rng, 6, 3, vocab), _prefix_lm_row(rng, 4, 5, vocab)]
    separate = np.sum([_loss(model, params, {k: v[None] for k, v in r.items()}) for r in rows], 0)
    packed, seg, pos = _pack(rows, 20)
    ce, w = _loss(model, params, dict(packed, decoder_segment_ids=seg, decoder_positions=pos))
    assert w == separate[1] == 8  # only the 3 + 5 target tokens count
    np.testing.assert_allclose(ce, separate[0], rtol=1e-5)
    # What the prefix "should" predict never enters the loss.
    other = dict(rows[0], decoder_target_tokens=rows[0]["decoder_target_tokens"].copy())
    other["decoder_target_tokens"][:6] = 3
    assert _loss(model, params, {k: v[None] for k, v in other.items()})[0] == pytest.approx(
        _loss(model, params, {k: v[None] for k, v in rows[0].items()})[0], rel=1e-6)


def test_loss_positions_gives_the_full_loss_and_gradients_from_target_positions_only():
    full = gemma_model(preset="tiny")
    gathered = gemma_model(preset="tiny", loss_positions=8)
    params = _init(full)
    rng = np.random.default_rng(2)
    rows = [_prefix_lm_row(rng, 6, 3, full.config.vocab_size),
            _prefix_lm_row(rng, 4, 5, full.config.vocab_size)]
    packed, seg, pos = _pack(rows, 20)
    second, _, _ = _pack([_prefix_lm_row(rng, 9, 4, full.config.vocab_size)], 20)
    batch = {k: np.concatenate([packed[k], second[k]]) for k in packed}
    batch["decoder_segment_ids"] = np.concatenate([seg, (second["decoder_input_tokens"] > 0) * 1])
    batch["decoder_positions"] = np.concatenate([pos, np.arange(20)[None]]).astype(np.int32)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}

    def loss_and_grads(model):
        def f(p):
            ce, _, w = step_lib.token_losses(*model.loss_inputs(p, batch))
            return ce, w
        return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

    (ce_full, w_full), g_full = loss_and_grads(full)
    (ce_gathered, w_gathered), g_gathered = loss_and_grads(gathered)
    logits, _, _ = jax.jit(gathered.loss_inputs)(params, batch)
    assert logits.shape[1] == 8 and float(w_gathered) == float(w_full) == 12
    np.testing.assert_allclose(float(ce_gathered), float(ce_full), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 g_gathered, g_full)
    gathered.check_batch(batch)
    assert gemma_model(preset="tiny", loss_positions="auto").fit_to_data(33).loss_positions == 64
    with pytest.raises(ValueError, match="expected None, 'auto' or a positive int"):
        gemma_model(preset="tiny", loss_positions="Auto")
    with pytest.raises(ValueError, match="loss_positions=4; raise it to at least 8"):
        gemma_model(preset="tiny", loss_positions=4).check_batch(batch)


def test_bf16_compute_keeps_f32_params_and_close_loss():
    f32, bf16 = t5_model(preset="tiny"), t5_model(preset="tiny", dtype="bfloat16")
    params = _init(f32)
    shapes = jax.eval_shape(bf16.init_fn, jax.random.PRNGKey(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))
    rng = np.random.default_rng(2)
    tgt = rng.integers(2, 256, (4, 6)).astype(np.int32)
    batch = {"encoder_input_tokens": rng.integers(2, 256, (4, 9)).astype(np.int32),
             "decoder_target_tokens": tgt,
             "decoder_input_tokens": np.concatenate([np.zeros((4, 1), np.int32), tgt[:, :-1]], 1),
             "decoder_loss_weights": np.ones((4, 6), np.float32)}
    logits = jax.jit(bf16.logits_fn)(params, {k: jnp.asarray(v) for k, v in batch.items()})
    assert logits.dtype == jnp.float32  # the loss is always computed in f32
    a, b = _loss(f32, params, batch)[0], _loss(bf16, params, batch)[0]
    assert a != b and abs(a - b) / a < 2e-2


def test_start_from_hf_t5_safetensors(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from lmcor.models import partitioning
    from lmcor.training import state as state_lib
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_heads=4,
                                num_layers=2, num_decoder_layers=2, feed_forward_proj="gated-gelu",
                                tie_word_embeddings=False, dropout_rate=0.0, pad_token_id=0,
                                eos_token_id=1, decoder_start_token_id=0)
    hf = transformers.T5ForConditionalGeneration(cfg).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    from lmcor.checkpoints.hf_t5 import t5_config_from_hf
    model = t5_model(config=t5_config_from_hf(str(tmp_path)), pretrained=str(tmp_path))
    opt = state_lib.make_optimizer(state_lib.make_schedule())
    state, _ = state_lib.create_state(model.init_fn, opt, partitioning.make_mesh(4, 2), 0,
                                      model.rules, init_params=model.load_pretrained())
    rng = np.random.default_rng(3)
    src = rng.integers(2, 128, (2, 7)).astype(np.int64)
    labels = rng.integers(2, 128, (2, 5)).astype(np.int64)
    with torch.no_grad():
        want = float(hf(input_ids=torch.tensor(src), labels=torch.tensor(labels)).loss)
    dec_in = np.concatenate([np.zeros((2, 1)), labels[:, :-1]], 1)
    ce, w = _loss(model, state.params, {
        "encoder_input_tokens": src.astype(np.int32), "decoder_input_tokens": dec_in.astype(np.int32),
        "decoder_target_tokens": labels.astype(np.int32),
        "decoder_loss_weights": np.ones((2, 5), np.float32)})
    np.testing.assert_allclose(ce / w, want, rtol=1e-4)
