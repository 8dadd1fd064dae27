"""Beam search with the GNMT/T5X length penalty, as one jit-able loop over the decode adapters.

Beams are ranked by log-prob / ((5 + length) / 6) ** alpha, with length counting EOS. The loop
leaves early once, for every row, no live beam can still beat the worst of the K finished ones;
beams still live at the end compete with the finished ones (scored at their current length), so
a row always returns K hypotheses even if none produced EOS.
"""
import jax
import jax.numpy as jnp

from lmcor.decode.arrays import NEG_INF, repeat_rows
from lmcor.decode.samplers import lower_eos


def length_penalty(length, alpha):
    return ((5.0 + length) / 6.0) ** alpha


def _take(x, idx):
    """x [B, C, ...], idx [B, K] -> x[b, idx[b, k]]."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def _top(scores, k, *fields):
    vals, idx = jax.lax.top_k(scores, k)
    return (vals,) + tuple(_take(f, idx) for f in fields)


def _expand(state, i, logits, eos_ids, alpha, opts):
    """Extends every live beam by every token; keeps the K best live and K best finished."""
    b, k = state["live_lp"].shape
    vocab = logits.shape[-1]
    if opts["eos_penalty"]:
        logits = lower_eos(logits, eos_ids, opts["eos_penalty"])
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, vocab)
    cand = (state["live_lp"][..., None] + lp).reshape(b, k * vocab)
    # With E EOS ids at most E*K of the best (E+1)*K candidates end a beam, so >= K stay live.
    vals, flat = jax.lax.top_k(cand, k * (opts["num_eos"] + 1))
    beam, tok = flat // vocab, (flat % vocab).astype(jnp.int32)
    seqs = _take(state["live_seq"], beam)
    seqs = jnp.where(jnp.arange(seqs.shape[-1]) == i, tok[..., None], seqs)
    is_eos = jnp.isin(tok, eos_ids)
    lengths = jnp.full(vals.shape, i + 1, jnp.int32)

    new_score = jnp.where(is_eos, vals / length_penalty(i + 1.0, alpha), NEG_INF)
    fin = [jnp.concatenate([state[f], new], axis=1) for f, new in
           (("fin_seq", seqs), ("fin_lp", vals), ("fin_len", lengths))]
    fin_score = jnp.concatenate([state["fin_score"], new_score], axis=1)
    fin_score, fin_seq, fin_lp, fin_len = _top(fin_score, k, *fin)

    live_lp, live_seq, live_tok, live_beam = _top(jnp.where(is_eos, NEG_INF, vals), k,
                                                  seqs, tok, beam)
    state = dict(live_lp=live_lp, live_seq=live_seq, fin_seq=fin_seq, fin_lp=fin_lp,
                 fin_len=fin_len, fin_score=fin_score)
    rows = (jnp.arange(b)[:, None] * k + live_beam).reshape(-1)
    return state, live_tok.reshape(-1), rows


def _all_done(state, alpha, steps):
    # Log-probs only fall and the penalty is largest at the maximum length (alpha >= 0), so
    # live_lp / penalty(steps) bounds every score a live beam can still reach.
    best_live = state["live_lp"][:, 0] / length_penalty(float(steps), alpha)
    return jnp.all(state["fin_score"][:, -1] > best_live)


def _merge_live(state, steps_taken, alpha, k):
    live_score = state["live_lp"] / length_penalty(steps_taken.astype(jnp.float32), alpha)
    live_len = jnp.full(state["live_lp"].shape, steps_taken, jnp.int32)
    scores = jnp.concatenate([state["fin_score"], live_score], axis=1)
    fields = [jnp.concatenate([state[f], live], axis=1) for f, live in
              (("fin_seq", state["live_seq"]), ("fin_lp", state["live_lp"]),
               ("fin_len", live_len))]
    scores, seqs, lp, lengths = _top(scores, k, *fields)
    return dict(tokens=seqs, lp=lp, lengths=lengths, scores=scores)


def beam_loop(lm, opts, params, batch, eos_ids, alpha):
    """-> dict of [B, K, ...] arrays, best beam first: tokens, lp, lengths, scores."""
    k, steps, pad = opts["beam_size"], opts["max_new_tokens"], opts["pad_id"]
    logits, cache = lm.prefill(params, batch, steps)
    b = logits.shape[0]
    logits, cache = repeat_rows((logits, cache), k)
    start = jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF)  # one beam until the first split
    state = dict(
        live_lp=jnp.broadcast_to(start, (b, k)).astype(jnp.float32),
        live_seq=jnp.full((b, k, steps), pad, jnp.int32),
        fin_seq=jnp.full((b, k, steps), pad, jnp.int32),
        fin_lp=jnp.full((b, k), NEG_INF, jnp.float32),
        fin_len=jnp.zeros((b, k), jnp.int32),
        fin_score=jnp.full((b, k), NEG_INF, jnp.float32),
    )
    state, tok, rows = _expand(state, 0, logits, eos_ids, alpha, opts)

    def cond(carry):
        i, s = carry[0], carry[1]
        return (i < steps) & ~_all_done(s, alpha, steps)

    def body(carry):
        i, s, t, r, c = carry
        c = jax.tree.map(lambda x: x[r], c)
        lg, c = lm.step(params, t, c)
        s, t, r = _expand(s, i, lg, eos_ids, alpha, opts)
        return i + 1, s, t, r, c

    i, state, *_ = jax.lax.while_loop(cond, body, (jnp.int32(1), state, tok, rows, cache))
    return _merge_live(state, i, alpha, k)
