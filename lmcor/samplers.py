"""Choosing the next token from [N, V] logits: greedy, temperature, top-k, top-p.

Full-vocabulary work per step is kept to a few passes over the logits, because at Gemma's
262k vocabulary a sort or a per-entry random draw costs more than the model step on a CPU:
  * top-k: `lax.top_k`, then everything happens on the k survivors;
  * top-p alone: the nucleus is searched among the NUCLEUS_CAP best tokens, which almost always
    hold it; only when some row's nucleus is larger does a bisection over the vocabulary run;
  * plain temperature: inverse-CDF sampling with one uniform per row, over block sums and then
    inside one block, instead of Gumbel noise on every entry.
Each draw is exact (up to float rounding) for the distribution it names.
"""
import math

import jax
import jax.numpy as jnp

NEG_INF = -1e30
NUCLEUS_CAP = 1024


def _token_logprob(logits, tok):
    picked = jnp.take_along_axis(logits, tok[:, None], axis=-1)[:, 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def nucleus(sorted_vals, top_p):
    """Masks (to NEG_INF) sorted-descending logits outside the top-p nucleus.

    Keeps the smallest prefix whose mass reaches top_p; the best token is always kept.
    """
    probs = jax.nn.softmax(sorted_vals, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    return jnp.where(mass_before < top_p, sorted_vals, NEG_INF)


def inverse_cdf(key, logits):
    """One draw per row from softmax(logits), using a single uniform number per row."""
    n, vocab = logits.shape
    width = math.isqrt(vocab - 1) + 1
    blocks = -(-vocab // width)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = jnp.pad(probs, ((0, 0), (0, blocks * width - vocab))).reshape(n, blocks, width)
    block_mass = probs.sum(-1)
    ends = jnp.cumsum(block_mass, axis=-1)
    u = jax.random.uniform(key, (n, 1)) * ends[:, -1:]
    blk = jnp.minimum(jnp.sum(ends <= u, axis=-1), blocks - 1)
    inner = jnp.take_along_axis(probs, blk[:, None, None], axis=1)[:, 0]
    rest = u[:, 0] - jnp.take_along_axis(ends - block_mass, blk[:, None], axis=-1)[:, 0]
    j = jnp.sum(jnp.cumsum(inner, axis=-1) <= rest[:, None], axis=-1)
    # Rounding can push j past the block's last live entry; never return a zero-mass token.
    last_live = width - 1 - jnp.argmax((inner > 0)[:, ::-1], axis=-1)
    return (blk * width + jnp.minimum(j, last_live)).astype(jnp.int32)


def _sample_sorted(key, vals, idx, top_p, use_top_p):
    """Draws among candidates given as sorted logits `vals` with vocabulary ids `idx`."""
    if use_top_p:
        vals = nucleus(vals, top_p)
    j = jax.random.categorical(key, vals, axis=-1)
    tok = jnp.take_along_axis(idx, j[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return tok, _token_logprob(vals, j)


def _nucleus_threshold(scaled, top_p, iters: int = 40):
    """Smallest kept probability of the top-p nucleus, by bisection (for very flat rows)."""
    probs = jax.nn.softmax(scaled, axis=-1)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        ok = jnp.sum(jnp.where(probs >= mid[:, None], probs, 0.0), axis=-1) >= top_p
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo = jnp.zeros(scaled.shape[:1])
    lo, _ = jax.lax.fori_loop(0, iters, body, (lo, probs.max(-1) * (1 + 1e-6)))
    return probs, lo


def _sample_top_p(key, scaled, top_p):
    cap = min(NUCLEUS_CAP, scaled.shape[-1])
    vals, idx = jax.lax.top_k(scaled, cap)
    covered = jax.nn.logsumexp(vals, -1) - jax.nn.logsumexp(scaled, -1) >= jnp.log(top_p)

    def within_cap(_):
        return _sample_sorted(key, vals, idx, top_p, True)

    def whole_vocab(_):
        probs, threshold = _nucleus_threshold(scaled, top_p)
        masked = jnp.where(probs >= threshold[:, None], scaled, NEG_INF)
        tok = inverse_cdf(key, masked)
        return tok, _token_logprob(masked, tok)

    return jax.lax.cond(jnp.all(covered), within_cap, whole_vocab, None)


def choose(logits, key, *, greedy: bool, top_k: int, use_top_p: bool, temperature, top_p):
    """-> (token [N], log-prob under the sampled distribution, log-prob under the model)."""
    logits = logits.astype(jnp.float32)
    if greedy:
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        lp = _token_logprob(logits, tok)
        return tok, lp, lp
    scaled = logits / temperature
    if top_k:
        vals, idx = jax.lax.top_k(scaled, top_k)
        tok, lp = _sample_sorted(key, vals, idx, top_p, use_top_p)
    elif use_top_p:
        tok, lp = _sample_top_p(key, scaled, top_p)
    else:
        tok = inverse_cdf(key, scaled)
        lp = _token_logprob(scaled, tok)
    return tok, lp, _token_logprob(logits, tok)
