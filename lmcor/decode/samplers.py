"""Choosing the next token from [N, V] logits: greedy, temperature, top-k, top-p.

Full-vocabulary work per step is kept to a few passes over the logits, because at Gemma's
262k vocabulary a sort or a per-entry random draw costs more than the model step on a CPU:
  * greedy and top-k: one max per block of ~sqrt(V) entries, then the exact search runs only
    inside the few blocks that can hold the winners (a plain argmax or `lax.top_k` over 262k
    entries costs more than the model's matmuls on a 2-core CPU); then everything happens on the
    k survivors;
  * top-p alone: the nucleus is searched among the NUCLEUS_CAP best tokens, which almost always
    hold it; only when some row's nucleus is larger does a bisection over the vocabulary run;
  * plain temperature: inverse-CDF sampling with one uniform per row, over block sums and then
    inside one block, instead of Gumbel noise on every entry.
Each draw is exact (up to float rounding) for the distribution it names.
"""
import math

import jax
import jax.numpy as jnp

from lmcor.decode.arrays import NEG_INF

NUCLEUS_CAP = 1024


def _blocks(x):
    """[N, V] -> [N, B, W] with W ~ sqrt(V), padded with -inf (never chosen)."""
    n, vocab = x.shape
    width = math.isqrt(vocab - 1) + 1
    blocks = -(-vocab // width)
    x = jnp.pad(x, ((0, 0), (0, blocks * width - vocab)), constant_values=-jnp.inf)
    return x.reshape(n, blocks, width), width


def _block_max(xb):
    """[N, B, W] -> [N, B] maxima, reduced as N*B rows: XLA CPU splits a reduction over many
    short rows across cores, but not one over a few long rows (about 2x on two cores)."""
    n, blocks, width = xb.shape
    return xb.reshape(n * blocks, width).max(-1).reshape(n, blocks)


def argmax(x):
    """`jnp.argmax(x, -1)` (first index among ties) for [N, V], via block maxima."""
    if x.shape[-1] < 4096:
        return jnp.argmax(x, axis=-1).astype(jnp.int32)
    xb, width = _blocks(x)
    return _argmax_blocks(xb, _block_max(xb), width)


def _argmax_blocks(xb, block_max, width):
    blk = jnp.argmax(block_max, axis=-1)  # the first block holding the row maximum
    inner = jnp.take_along_axis(xb, blk[:, None, None], axis=1)[:, 0]
    return (blk * width + jnp.argmax(inner, axis=-1)).astype(jnp.int32)


def argmax_logprob(x):
    """(argmax, its log-softmax) for [N, V]: the block maxima give the row maximum too, so the
    log-sum-exp needs only one more pass (jax.nn.logsumexp would take the maximum again)."""
    if x.shape[-1] < 4096:
        tok = argmax(x)
        return tok, token_logprob(x, tok)
    xb, width = _blocks(x)
    n, blocks, _ = xb.shape
    block_max = _block_max(xb)
    top = block_max.max(-1)
    # log p(argmax) = max - logsumexp = -log(sum(exp(x - max))), summed as N*B short rows.
    shifted = xb.reshape(n * blocks, width) - jnp.repeat(top, blocks)[:, None]
    total = jnp.sum(jnp.exp(shifted), axis=-1).reshape(n, blocks).sum(-1)
    return _argmax_blocks(xb, block_max, width), -jnp.log(total)


def largest(x, k: int):
    """`lax.top_k(x, k)` values (sorted descending) and ids for [N, V].

    The k largest entries lie in the k blocks with the largest maxima, so `lax.top_k` runs on
    those blocks only. Equal values may come back with other ids than `lax.top_k` picks.
    """
    vocab = x.shape[-1]
    xb, width = _blocks(x)
    if k * width * 4 > vocab:  # few blocks to skip: the plain search is cheaper
        return jax.lax.top_k(x, k)
    _, blk = jax.lax.top_k(_block_max(xb), k)
    cand = jnp.take_along_axis(xb, blk[:, :, None], axis=1)  # [N, k, W]
    vals, j = jax.lax.top_k(cand.reshape(x.shape[0], -1), k)
    ids = jnp.take_along_axis(blk, j // width, axis=-1) * width + j % width
    return vals, ids.astype(jnp.int32)


def lower_eos(logits, eos_ids, penalty: float):
    """[N, V] logits with every EOS id's lowered by `penalty` (ids < 0 are padding): a
    decoder that ends too early writes on where it would have stopped by a small margin."""
    is_eos = jnp.isin(jnp.arange(logits.shape[-1]), eos_ids)
    return jnp.where(is_eos, logits - penalty, logits)


def token_logprob(logits, tok):
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
    xb, width = _blocks(logits)
    n, blocks = xb.shape[:2]
    probs = jnp.exp(xb - xb.max(axis=(1, 2), keepdims=True))
    probs = probs / probs.sum(axis=(1, 2), keepdims=True)
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
    return tok, token_logprob(vals, j)


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
    vals, idx = largest(scaled, cap)
    covered = jax.nn.logsumexp(vals, -1) - jax.nn.logsumexp(scaled, -1) >= jnp.log(top_p)

    def within_cap(_):
        return _sample_sorted(key, vals, idx, top_p, True)

    def whole_vocab(_):
        probs, threshold = _nucleus_threshold(scaled, top_p)
        masked = jnp.where(probs >= threshold[:, None], scaled, NEG_INF)
        tok = inverse_cdf(key, masked)
        return tok, token_logprob(masked, tok)

    return jax.lax.cond(jnp.all(covered), within_cap, whole_vocab, None)


def choose(logits, key, *, greedy: bool, top_k: int, use_top_p: bool, temperature, top_p):
    """-> (token [N], log-prob under the sampled distribution, log-prob under the model)."""
    logits = logits.astype(jnp.float32)
    if greedy:
        tok, lp = argmax_logprob(logits)
        return tok, lp, lp
    scaled = logits / temperature
    if top_k:
        vals, idx = largest(scaled, top_k)
        tok, lp = _sample_sorted(key, vals, idx, top_p, use_top_p)
    elif use_top_p:
        tok, lp = _sample_top_p(key, scaled, top_p)
    else:
        tok = inverse_cdf(key, scaled)
        lp = token_logprob(scaled, tok)
    return tok, lp, token_logprob(logits, tok)
