"""The greedy and sampling loop: one `lax.while_loop` over a static maximum length, leaving
early once every row has produced EOS or completed a stop sequence.

Each step draws one token per row with `samplers.choose`, keyed by the step index, so a row's
tokens do not depend on how many steps were compiled.
"""
import jax
import jax.numpy as jnp

from lmcor.decode import samplers
from lmcor.decode.arrays import repeat_rows


def stop_hit(recent, table):
    """recent [N, W] last W tokens; table [S, W] -> [N] bool, any stop sequence just completed."""
    match = (table[None] == -1) | (recent[:, None, :] == table[None])
    return jnp.any(jnp.all(match, axis=-1), axis=-1)


def _record(state, i, logits, key, eos_ids, table, opts, temperature, top_p):
    """Chooses token i for every row and folds it into the loop state."""
    model_logits = logits
    if opts["eos_penalty"]:
        logits = samplers.lower_eos(logits, eos_ids, opts["eos_penalty"])
    tok, lp, mlp = samplers.choose(logits, jax.random.fold_in(key, i), greedy=opts["greedy"],
                                   top_k=opts["top_k"], use_top_p=opts["use_top_p"],
                                   temperature=temperature, top_p=top_p)
    if opts["greedy_first"]:
        first = jnp.arange(tok.shape[0]) % opts["num_samples"] == 0
        best, best_lp, _ = samplers.choose(logits, key, greedy=True, top_k=0, use_top_p=False,
                                           temperature=temperature, top_p=top_p)
        tok, lp, mlp = (jnp.where(first, best, tok), jnp.where(first, best_lp, lp),
                        jnp.where(first, best_lp, mlp))
    if opts["eos_penalty"]:  # choose() saw the lowered EOS: take the model's own log-prob
        mlp = samplers.token_logprob(model_logits.astype(jnp.float32), tok)
    done = state["done"]
    tok = jnp.where(done, opts["pad_id"], tok)
    recent = jnp.concatenate([state["recent"][:, 1:], tok[:, None]], axis=1)
    finished = jnp.isin(tok, eos_ids) | stop_hit(recent, table)
    return dict(
        state,
        tokens=jax.lax.dynamic_update_slice(state["tokens"], tok[:, None], (0, i)),
        lengths=state["lengths"] + (~done).astype(jnp.int32),
        lp=state["lp"] + jnp.where(done, 0.0, lp),
        mlp=state["mlp"] + jnp.where(done, 0.0, mlp),
        recent=recent,
        done=done | finished,
        last=tok,
    )


def sample_loop(lm, opts, params, batch, key, eos_ids, table, temperature, top_p, limit=None):
    """`limit` (traced): stop after this many of the compiled `max_new_tokens` steps, so one
    executable serves every shorter length; None leaves the loop exactly as compiled."""
    steps = opts["max_new_tokens"]
    logits, cache = lm.prefill(params, batch, steps)
    logits, cache = repeat_rows((logits, cache), opts["num_samples"])
    n = logits.shape[0]
    state = dict(
        tokens=jnp.full((n, steps), opts["pad_id"], jnp.int32),
        lengths=jnp.zeros((n,), jnp.int32),
        lp=jnp.zeros((n,), jnp.float32),
        mlp=jnp.zeros((n,), jnp.float32),
        recent=jnp.full((n, table.shape[1]), -2, jnp.int32),
        done=jnp.zeros((n,), bool),
        last=jnp.zeros((n,), jnp.int32),
    )
    record = lambda s, i, lg: _record(s, i, lg, key, eos_ids, table, opts, temperature, top_p)
    state = record(state, 0, logits)

    def cond(carry):
        i, s, _ = carry
        end = steps if limit is None else jnp.minimum(limit, steps)
        return (i < end) & ~jnp.all(s["done"])

    def body(carry):
        i, s, c = carry
        lg, c = lm.step(params, s["last"], c)
        return i + 1, record(s, i, lg), c

    _, state, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), state, cache))
    return {k: state[k] for k in ("tokens", "lengths", "lp", "mlp")}
