"""Decoding invariants on tiny random models built from the real model code (T5 and Gemma 3).

Every mode is checked against an independent reference: greedy against an argmax loop over the
full (uncached) forward pass, beam search against exhaustive search, sampling against greedy in
the limits where they must agree.
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from lmcor import decode
from lmcor.decode import DecodeConfig, length_penalty

STEPS = 8
PROMPTS = ["\u0105\u0110\u0120\u0130\u0140\u0150\u0160", "\u0170\u0108", "\u0109\u0119\u0129\u0139"]


class CharTokenizer:
    """Token id i <-> the single character chr(0x100 + i): exact, invertible, any vocab size."""

    def encode(self, text, add_bos=False):
        return ([2] if add_bos else []) + [ord(c) - 0x100 for c in text]

    def decode(self, ids):
        return "".join(chr(0x100 + int(i)) for i in ids)


# --------------------------------------------------------------------------- the two families


@functools.cache  # one model (and so one set of compiled loops) per vocabulary size
def _t5(vocab=128):
    from lmcor.models.t5 import T5, T5Config, T5LM

    cfg = T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_heads=4,
                   num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
    lm = T5LM(cfg)
    ids = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(jax.jit(lm.module.init)(jax.random.key(1), ids, ids)["params"])

    @jax.jit
    def full_logits(batch, generated):
        start = jnp.full((generated.shape[0], 1), cfg.decoder_start_id, jnp.int32)
        dec = jnp.concatenate([start, generated[:, :-1]], axis=1)
        return lm.module.apply({"params": params}, batch["encoder_tokens"], dec)

    return lm, params, full_logits


# full_logits(batch, generated [B, T]) -> [B, T, V]: out[:, t] is the uncached forward pass's
# prediction after generated[:, :t]; being causal, later (placeholder) tokens cannot leak in.


def _gemma(vocab=128):
    gemma = pytest.importorskip("lmcor.models.gemma")
    cfg = gemma.GemmaConfig.preset("tiny", vocab_size=vocab)
    module = gemma.Gemma3(cfg)
    lm = gemma.GemmaLM(module)
    ids = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(jax.jit(module.init)(jax.random.key(1), ids)["params"])

    @jax.jit
    def full_logits(batch, generated):
        gen = generated[:, :-1]
        mask = jnp.concatenate([batch["mask"], jnp.ones(gen.shape, bool)], axis=1)
        tokens = jnp.concatenate([batch["tokens"], gen], axis=1)
        positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
        out = module.apply({"params": params}, tokens, positions=positions,
                           segment_ids=mask.astype(jnp.int32))
        return out[:, batch["tokens"].shape[1] - 1:]

    return lm, params, full_logits


FAMILIES = {"t5": _t5, "gemma": _gemma}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    lm, params, full_logits = FAMILIES[request.param]()
    ids = [CharTokenizer().encode(p, add_bos=not decode.is_encdec(lm)) for p in PROMPTS]
    if decode.is_encdec(lm):
        ids = [t + [lm.eos_id] for t in ids]
    # Same shapes as `generate(..., batch_size=4, bucket=8)` below, so compiles are shared.
    batch = decode.pad_prompts(ids, encdec=decode.is_encdec(lm),
                               pad_id=lm.pad_id, bucket=8, rows=4)
    greedy = decode.decode_batch(lm, params, batch, DecodeConfig(max_new_tokens=STEPS))
    return dict(name=request.param, lm=lm, params=params, full_logits=full_logits, batch=batch,
                greedy=greedy)


def _decode(fam, seed=0, **kw):
    config = DecodeConfig(max_new_tokens=STEPS, **kw)
    return decode.decode_batch(fam["lm"], fam["params"], fam["batch"], config, seed=seed)


def _decode_len(fam, n, seed=0, **kw):
    config = DecodeConfig(max_new_tokens=n, **kw)
    return decode.decode_batch(fam["lm"], fam["params"], fam["batch"], config, seed=seed)


def _reference_greedy(fam, lowered=(), penalty=0.0):
    """Argmax loop over the full forward pass, no cache: the ground truth for cached greedy.
    The ids in `lowered` lose `penalty` from their logits before each argmax; log-probs stay
    the model's own."""
    rows = fam["batch"][next(iter(fam["batch"]))].shape[0]
    generated = np.zeros((rows, STEPS), np.int32)
    total = np.zeros(rows)
    for t in range(STEPS):
        logits = fam["full_logits"](fam["batch"], jnp.asarray(generated))[:, t]
        tok = np.asarray(jnp.argmax(logits.at[:, list(lowered)].add(-penalty), axis=-1))
        total += np.asarray(jax.nn.log_softmax(logits))[np.arange(rows), tok]
        generated[:, t] = tok
    return generated, total


def _cut_at_eos(row, eos):
    hits = np.flatnonzero(row == eos)
    return row[: hits[0] + 1] if hits.size else row


# --------------------------------------------------------------------------- greedy


def test_cached_greedy_equals_uncached_argmax_loop(family):
    ref, _ = _reference_greedy(family)
    got = family["greedy"]
    eos, pad = family["lm"].eos_id, family["lm"].pad_id
    for r in range(ref.shape[0]):
        want = _cut_at_eos(ref[r], eos)
        assert got.lengths[r] == len(want)
        np.testing.assert_array_equal(got.tokens[r, : len(want)], want)
        assert np.all(got.tokens[r, len(want):] == pad)
    assert np.all(got.logprobs < 0) and np.allclose(got.logprobs, got.model_logprobs)


def test_logprobs_are_sums_of_full_forward_token_logprobs(family):
    ref, ref_lp = _reference_greedy(family)
    got = family["greedy"]
    rows = got.lengths == STEPS  # rows without EOS: the reference sums all STEPS tokens
    np.testing.assert_allclose(got.logprobs[rows], ref_lp[rows], rtol=1e-4, atol=1e-4)


def test_eos_stops_one_row_while_others_continue(family):
    g = family["greedy"]
    # Declare as EOS a token that row 0 emits (for the first time) mid-way and row 1 never does.
    pos, tok = next((p, t) for p, t in enumerate(g.tokens[0]) if 0 < p < STEPS - 1
                    and t not in g.tokens[0, :p] and t not in g.tokens[1])
    out = _decode(family, extra_eos_ids=(int(tok),))
    assert out.lengths[0] == pos + 1
    np.testing.assert_array_equal(out.tokens[0, : pos + 1], g.tokens[0, : pos + 1])
    assert np.all(out.tokens[0, pos + 1:] == family["lm"].pad_id)
    np.testing.assert_array_equal(out.tokens[1], g.tokens[1])
    assert out.lengths[1] == g.lengths[1]


def test_eos_penalty_lowers_the_end_tokens_before_each_choice(family):
    g, eos = family["greedy"], family["lm"].eos_id
    # A token that row 0 emits mid-way, declared an EOS: a penalty beyond every logit gap must
    # make every row write on past both ends, as an argmax loop over the lowered logits does.
    tok = int(next(t for p, t in enumerate(g.tokens[0]) if 0 < p < STEPS - 1))
    out = _decode(family, extra_eos_ids=(tok,), eos_penalty=1e9)
    ref, ref_lp = _reference_greedy(family, lowered=(eos, tok), penalty=1e9)
    assert np.all(out.lengths == STEPS)
    np.testing.assert_array_equal(out.tokens, ref)
    np.testing.assert_allclose(out.model_logprobs, ref_lp, rtol=1e-4, atol=1e-4)
    # A negative penalty as large ends every row, greedy or beam, on its first token.
    for beam_size in (1, 2):
        out = _decode(family, beam_size=beam_size, eos_penalty=-1e9)
        assert np.all(out.lengths == 1) and np.all(out.tokens[:, 0] == eos)
    out = _decode(family, beam_size=2, eos_penalty=1e9)
    assert np.all(out.lengths == STEPS) and not np.any(out.tokens == eos)


# --------------------------------------------------------------------------- sampling


def test_near_zero_temperature_equals_greedy(family):
    out = _decode(family, temperature=1e-6, num_samples=2)  # same compile as the seed test
    np.testing.assert_array_equal(out.tokens, np.repeat(family["greedy"].tokens, 2, axis=0))


def test_top_k_one_and_tiny_top_p_equal_greedy(family):
    for kw in (dict(top_k=1), dict(top_p=1e-6)):
        out = _decode(family, temperature=1.0, **kw)
        np.testing.assert_array_equal(out.tokens, family["greedy"].tokens, err_msg=str(kw))
        # One allowed token per step: it is drawn with probability 1.
        np.testing.assert_allclose(out.logprobs, 0.0, atol=1e-5)


def test_same_seed_same_samples_different_seed_different(family):
    a = _decode(family, temperature=1.0, num_samples=2, seed=7)
    b = _decode(family, temperature=1.0, num_samples=2, seed=7)
    c = _decode(family, temperature=1.0, num_samples=2, seed=8)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert not np.array_equal(a.tokens, c.tokens)
    # The n samples of one prompt are not copies of each other either.
    assert len({tuple(row) for row in a.tokens}) > len(PROMPTS)
    # At temperature 1 without truncation the sampling and model distributions coincide.
    np.testing.assert_allclose(a.logprobs, a.model_logprobs, rtol=1e-4)


def test_greedy_first_row_is_greedy_and_the_rest_are_samples(family):
    out = _decode(family, temperature=1.0, num_samples=3, seed=7, greedy_first=True)
    g = family["greedy"]
    np.testing.assert_array_equal(out.tokens[::3], g.tokens)
    np.testing.assert_allclose(out.logprobs[::3], g.logprobs, rtol=1e-5)
    np.testing.assert_allclose(out.model_logprobs[::3], g.model_logprobs, rtol=1e-5)
    samples = np.delete(out.tokens, np.s_[::3], axis=0)
    assert len({tuple(row) for row in samples}) > len(PROMPTS)  # not copies of the greedy row


# --------------------------------------------------------------------------- length buckets


def test_bucketed_greedy_equals_exact_length_greedy(family):
    exact = _decode_len(family, 5)
    out = _decode_len(family, 5, max_new_tokens_bucket=16)
    print("bucketed", out.tokens.tolist(), out.lengths.tolist())
    assert out.tokens.shape == exact.tokens.shape == (4, 5) and np.all(out.lengths <= 5)
    np.testing.assert_array_equal(out.tokens, exact.tokens)
    np.testing.assert_array_equal(out.lengths, exact.lengths)
    np.testing.assert_array_equal(out.tokens, family["greedy"].tokens[:, :5])
    np.testing.assert_allclose(out.logprobs, exact.logprobs, rtol=1e-5, atol=1e-6)


def test_lengths_under_one_bucket_share_one_executable(family):
    lm = family["lm"]

    def compiled_by(**kw):
        before = decode.compiled_count(lm)
        out = _decode_len(family, **kw)
        return out, decode.compiled_count(lm) - before

    # A bucket no other test uses, so its first length compiles here.
    (a, first), (b, second) = [compiled_by(n=n, max_new_tokens_bucket=32) for n in (3, 6)]
    (_, exact_3), (_, exact_6) = [compiled_by(n=n) for n in (3, 6)]
    print("bucketed compiles", first, second, "exact compiles", exact_3, exact_6)
    assert (first, second) == (1, 0) and b.timing["compile_s"] == 0.0
    assert (exact_3, exact_6) == (1, 1)
    assert np.all(a.lengths <= 3) and np.all(b.lengths <= 6)
    np.testing.assert_array_equal(a.tokens, b.tokens[:, :3])


def test_bucketed_samples_equal_exact_length_samples(family):
    # The sampler's key is folded with the step index, so the stream does not depend on how
    # many steps the loop was compiled for.
    kw = dict(temperature=1.0, num_samples=2, seed=7)
    exact = _decode(family, **kw)  # the loop the seed test above compiles
    out = _decode(family, max_new_tokens_bucket=16, **kw)
    print("bucketed samples", out.tokens.tolist())
    np.testing.assert_array_equal(out.tokens, exact.tokens)
    np.testing.assert_array_equal(out.lengths, exact.lengths)
    np.testing.assert_allclose(out.logprobs, exact.logprobs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.model_logprobs, exact.model_logprobs, rtol=1e-5, atol=1e-6)


def test_bucket_shorter_than_the_length_is_refused():
    with pytest.raises(ValueError, match="max_new_tokens_bucket"):
        DecodeConfig(max_new_tokens=8, max_new_tokens_bucket=4)


# --------------------------------------------------------------------------- beam search


def test_beam_size_one_equals_greedy(family):
    out = _decode(family, beam_size=1, alpha=0.0)
    np.testing.assert_array_equal(out.tokens, family["greedy"].tokens)
    np.testing.assert_allclose(out.logprobs, family["greedy"].logprobs, rtol=1e-5)


def test_beam_search_logprob_at_least_greedy(family):
    out = _decode(family, beam_size=4, alpha=0.0, return_all_beams=True)
    assert np.all(out.logprobs >= family["greedy"].logprobs - 1e-5)
    assert np.all(np.diff(out.beam_scores, axis=1) <= 1e-6)  # best first


def test_stop_sequences_cut_text_and_end_rows(family):
    lm, tok = family["lm"], CharTokenizer()
    full = decode.generate(lm, family["params"], tok, PROMPTS, DecodeConfig(max_new_tokens=STEPS),
                           batch_size=4, bucket=8)
    stop = full.texts[0][2:4]
    out = decode.generate(lm, family["params"], tok, PROMPTS,
                          DecodeConfig(max_new_tokens=STEPS, stop=(stop, "\u01ff")),
                          batch_size=4, bucket=8)
    for r, text in enumerate(full.texts):
        cut = text.find(stop)
        assert out.texts[r] == (text if cut < 0 else text[:cut])
        if cut >= 0:  # the loop ended that row right after the stop string's last token
            assert out.lengths[r] == cut + len(stop)
    assert out.texts[0] == full.texts[0][: full.texts[0].find(stop)] and stop not in out.texts[0]


def test_padding_does_not_change_results(family):
    lm, tok = family["lm"], CharTokenizer()
    config = DecodeConfig(max_new_tokens=STEPS)
    together = decode.generate(lm, family["params"], tok, PROMPTS, config, batch_size=4,
                               bucket=8)
    alone = decode.generate(lm, family["params"], tok, PROMPTS, config, batch_size=1, bucket=16)
    np.testing.assert_array_equal(together.tokens, alone.tokens)
    np.testing.assert_allclose(together.logprobs, alone.logprobs, rtol=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 0.8])
def test_wide_beam_equals_exhaustive_search(alpha):
    """With beam_size >= V**(T-1) nothing is pruned, so beam search must find the true best."""
    vocab, steps = 6, 3
    lm, params, full_logits = _t5(vocab)
    batch = {"encoder_tokens": jnp.array([[2, 3, 4, 1], [5, 1, 0, 0]], jnp.int32)}
    out = decode.decode_batch(lm, params, batch,
                              DecodeConfig(max_new_tokens=steps, beam_size=vocab ** 2,
                                           alpha=alpha))
    seqs = np.array(list(itertools.product(range(vocab), repeat=steps)), np.int32)
    for r in range(2):
        rows = {k: jnp.repeat(v[r: r + 1], len(seqs), axis=0) for k, v in batch.items()}
        logp = np.asarray(jax.nn.log_softmax(full_logits(rows, jnp.asarray(seqs))))
        lp = np.take_along_axis(logp, seqs[..., None], axis=-1)[..., 0]
        ends = np.array([list(s).index(lm.eos_id) + 1 if lm.eos_id in s else steps for s in seqs])
        total = np.array([lp[i, : ends[i]].sum() for i in range(len(seqs))])
        scores = total / length_penalty(ends, alpha)
        best = int(np.argmax(scores))
        np.testing.assert_allclose(out.scores[r], scores[best], rtol=1e-5)
        np.testing.assert_allclose(out.logprobs[r], total[best], rtol=1e-5)
        np.testing.assert_array_equal(out.tokens[r, : ends[best]], seqs[best, : ends[best]])


# --------------------------------------------------------------------------- the samplers


def _numpy_nucleus(probs, top_p):
    order = np.argsort(-probs)
    before = np.cumsum(probs[order]) - probs[order]
    return set(order[before < top_p].tolist())


def test_inverse_cdf_draws_follow_the_softmax():
    from lmcor.decode.samplers import choose

    rows, vocab = 8192, 1000  # 1000 is not a square: the last block is padded
    logits = np.random.default_rng(0).normal(size=vocab).astype(np.float32) * 2
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    tok, lp, mlp = jax.jit(lambda x, k: choose(x, k, greedy=False, top_k=0, use_top_p=False,
                                               temperature=1.0, top_p=1.0))(
        jnp.tile(logits, (rows, 1)), jax.random.key(0))
    freq = np.bincount(np.asarray(tok), minlength=vocab) / rows
    sigma = np.sqrt(probs * (1 - probs) / rows)
    assert np.all(np.abs(freq - probs) <= 5 * sigma + 1e-4)
    np.testing.assert_allclose(np.asarray(lp), np.log(probs[np.asarray(tok)]), rtol=1e-4)


@pytest.mark.parametrize("vocab", [600, 3000])  # nucleus inside / beyond the top-k shortcut
def test_top_p_samples_only_from_the_nucleus(vocab):
    from lmcor.decode.samplers import NUCLEUS_CAP, choose

    rows, top_p = 512, 0.6
    logits = np.random.default_rng(1).normal(size=vocab).astype(np.float32) * 0.3
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    allowed = _numpy_nucleus(probs, top_p)
    assert (len(allowed) > NUCLEUS_CAP) == (vocab == 3000)
    tok, lp, _ = jax.jit(lambda x, k: choose(x, k, greedy=False, top_k=0, use_top_p=True,
                                             temperature=1.0, top_p=top_p))(
        jnp.tile(logits, (rows, 1)), jax.random.key(2))
    tok = np.asarray(tok)
    assert set(tok.tolist()) <= allowed and len(set(tok.tolist())) > rows // 4
    mass = probs[sorted(allowed)].sum()  # drawn with probability p / (nucleus mass)
    np.testing.assert_allclose(np.asarray(lp), np.log(probs[tok] / mass), rtol=1e-3)


@pytest.mark.parametrize("vocab", [5000, 262144])  # a padded last block / Gemma's vocabulary
def test_blocked_argmax_and_top_k_equal_the_plain_searches(vocab):
    from lmcor.decode.samplers import argmax, argmax_logprob, largest

    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, vocab)).astype(np.float32)
    x[1, [7, vocab - 1]] = 50.0  # a tie for the maximum: the first index wins, as in argmax
    x[2, -40:] = 9.0 + np.arange(40)  # the winners all in the last (padded) block
    x[3] = -1e30  # a row with nothing but masked entries
    np.testing.assert_array_equal(np.asarray(jax.jit(argmax)(x)), np.argmax(x, axis=-1))
    tok, lp = jax.jit(argmax_logprob)(x)  # greedy's token and log-prob from the block maxima
    np.testing.assert_array_equal(np.asarray(tok), np.argmax(x, axis=-1))
    want_lp = np.asarray(jax.nn.log_softmax(x))[np.arange(len(x)), np.argmax(x, axis=-1)]
    np.testing.assert_allclose(np.asarray(lp), want_lp, rtol=1e-5, atol=1e-5)
    for k in (1, 50):
        vals, ids = jax.jit(largest, static_argnums=1)(x, k)
        want_vals, _ = jax.lax.top_k(x, k)
        np.testing.assert_array_equal(np.asarray(vals), np.asarray(want_vals))
        np.testing.assert_array_equal(np.take_along_axis(x, np.asarray(ids), -1), np.asarray(vals))


@pytest.mark.parametrize("mode", ["greedy", "beam"])
def test_compile_only_compiles_the_shape_and_decodes_nothing(family, mode):
    # A length no other test decodes, so the warm-up below is what compiles it.
    kw = dict(beam_size=2) if mode == "beam" else {}
    lm, before = family["lm"], decode.compiled_count(family["lm"])
    config = DecodeConfig(max_new_tokens=7, **kw)
    warm = decode.decode_batch(lm, family["params"], family["batch"], config,
                               compile_only=True)
    assert decode.compiled_count(lm) - before == 1
    assert warm.tokens.size == 0 and warm.timing["decode_s"] == 0.0
    assert warm.timing["compile_s"] > 0
    # The real decode then runs the executable the warm-up compiled, and decodes as usual.
    dec = decode.decode_batch(lm, family["params"], family["batch"], config)
    assert dec.timing["compile_s"] == 0.0 and decode.compiled_count(lm) - before == 1
    if mode == "greedy":
        np.testing.assert_array_equal(dec.tokens, family["greedy"].tokens[:, :7])
