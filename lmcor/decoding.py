"""Jit-compiled decoding over the decode-adapter contract (`GemmaLM`, `T5LM`).

Every mode runs its whole token loop inside one `jax.jit` (`lax.while_loop` over a static
maximum length, leaving early once every row is finished), so a batch costs one host round trip.

Log-probabilities returned per sequence (sums over the generated tokens, EOS included):
  * `logprobs`       - greedy and beam: under the model's unscaled distribution;
                       sampling: under the distribution actually sampled from (after
                       temperature, top-k and top-p), i.e. the probability of drawing it.
  * `model_logprobs` - always under the model's unscaled distribution.
Beam search also returns `scores`: the log-prob divided by the GNMT length penalty
((5 + length) / 6) ** alpha, which is what the beams are ranked by.
"""
import dataclasses
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lmcor import beam_search, samplers


def _bucket(n: int, bucket: int) -> int:
    return max(bucket, -(-n // bucket) * bucket)


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """What to generate. `temperature == 0` means greedy; `beam_size > 1` means beam search.

    `max_new_tokens_bucket` (greedy and sampling; beam search ignores it and compiles for
    `max_new_tokens`): compile the loop, its token buffer and its KV cache for this many new
    tokens and stop after `max_new_tokens` through a traced limit, so every `max_new_tokens` up
    to the bucket shares one executable. The tokens are the same as without it (the random
    stream is keyed by step); the longer cache can move log-probs by rounding. None compiles
    for `max_new_tokens` exactly.
    """
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    num_samples: int = 1
    beam_size: int = 1
    alpha: float = 0.6
    stop: tuple[str, ...] = ()
    extra_eos_ids: tuple[int, ...] = ()
    return_all_beams: bool = False
    # Sampling only: the first of each prompt's num_samples rows is its greedy continuation, so
    # a greedy output and its samples share one prefill (the paper's pool in one call).
    greedy_first: bool = False
    max_new_tokens_bucket: Optional[int] = None

    def __post_init__(self):
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.max_new_tokens_bucket is None
             or self.max_new_tokens_bucket >= self.max_new_tokens,
             "max_new_tokens_bucket must be None or >= max_new_tokens"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.num_samples >= 1, "num_samples must be >= 1"),
            (self.beam_size >= 1, "beam_size must be >= 1"),
            (not (self.beam_size > 1 and self.temperature > 0),
             "beam search and sampling (temperature > 0) are exclusive"),
            (not (self.num_samples > 1 and self.temperature == 0 and self.beam_size == 1),
             "num_samples > 1 needs temperature > 0 (greedy samples would all be equal)"),
            (not self.greedy_first or (self.temperature > 0 and self.beam_size == 1),
             "greedy_first needs sampling (temperature > 0)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"DecodeConfig: {msg}")

    @property
    def mode(self) -> str:
        if self.beam_size > 1:
            return "beam"
        return "sample" if self.temperature > 0 else "greedy"


@dataclasses.dataclass
class Decoded:
    """Rows are prompt-major: prompt b's samples are rows b*num_samples ... b*num_samples+n-1."""
    tokens: np.ndarray          # [N, T] generated ids (EOS kept), pad_id after the end
    lengths: np.ndarray         # [N] generated tokens per row, EOS included
    logprobs: np.ndarray        # [N] see module docstring
    model_logprobs: np.ndarray  # [N] under the unscaled model distribution
    texts: list[str] | None = None
    scores: np.ndarray | None = None       # beam only: length-penalised log-probs
    beam_tokens: np.ndarray | None = None  # [B, K, T] every beam, best first
    beam_scores: np.ndarray | None = None  # [B, K]
    beam_logprobs: np.ndarray | None = None
    timing: dict | None = None  # {"compile_s", "decode_s"}, summed over batches


# --------------------------------------------------------------------------- stop handling


def stop_table(tokenizer, stop: Sequence[str]) -> np.ndarray:
    """Token ids of each stop string, left-padded with -1 (wildcard) to one width.

    The in-loop check only ends rows early; the exact cut happens on the decoded text, so a stop
    string the model spells with different tokens is still cut, just not stopped early. The table
    is rounded up to 4 rows x 8 columns (unused rows hold -3, which no token equals) so that
    changing the stop strings rarely changes the compiled shape.
    """
    seqs = [s for s in (tokenizer.encode(x) for x in stop if x) if s]
    width = _bucket(max([len(s) for s in seqs], default=1), 8)
    table = np.full((_bucket(len(seqs), 4), width), -3, np.int32)
    for r, s in enumerate(seqs):
        table[r] = [-1] * (width - len(s)) + list(s)
    return table


def _stop_hit(recent, table):
    """recent [N, W] last W tokens; table [S, W] -> [N] bool, any stop sequence just completed."""
    match = (table[None] == -1) | (recent[:, None, :] == table[None])
    return jnp.any(jnp.all(match, axis=-1), axis=-1)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text up to (not including) the earliest occurrence of any stop string."""
    cuts = [text.find(s) for s in stop if s]
    cuts = [c for c in cuts if c >= 0]
    return text[: min(cuts)] if cuts else text


# --------------------------------------------------------------------------- the loop


def repeat_rows(tree, n: int):
    """Repeats every row of every leaf n times (row b -> rows b*n ... b*n+n-1)."""
    if n == 1:
        return tree
    return jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), tree)


def _record(state, i, logits, key, eos_ids, table, opts, temperature, top_p):
    """Chooses token i for every row and folds it into the loop state."""
    tok, lp, mlp = samplers.choose(logits, jax.random.fold_in(key, i), greedy=opts["greedy"],
                                   top_k=opts["top_k"], use_top_p=opts["use_top_p"],
                                   temperature=temperature, top_p=top_p)
    if opts["greedy_first"]:
        first = jnp.arange(tok.shape[0]) % opts["num_samples"] == 0
        best, best_lp, _ = samplers.choose(logits, key, greedy=True, top_k=0, use_top_p=False,
                                           temperature=temperature, top_p=top_p)
        tok, lp, mlp = (jnp.where(first, best, tok), jnp.where(first, best_lp, lp),
                        jnp.where(first, best_lp, mlp))
    done = state["done"]
    tok = jnp.where(done, opts["pad_id"], tok)
    recent = jnp.concatenate([state["recent"][:, 1:], tok[:, None]], axis=1)
    finished = jnp.isin(tok, eos_ids) | _stop_hit(recent, table)
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


def _sample_loop(lm, opts, params, batch, key, eos_ids, table, temperature, top_p, limit=None):
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


class _Compiled:
    """A jitted loop with its executables keyed on argument shapes, dtypes and shardings.

    Compiling ahead of time (rather than on first call) lets callers see compile time apart
    from decode time, which is what tokens/s should measure.
    """

    def __init__(self, fn):
        self.jitted, self.executables, self.last_compile_s = jax.jit(fn), {}, 0.0

    def compile(self, *args):
        """The executable for these arguments' shapes, compiled now unless it already is."""
        leaves, tree = jax.tree.flatten(args)
        sig = (tree, tuple((np.shape(x), str(getattr(x, "dtype", type(x))),
                            getattr(x, "sharding", None)) for x in leaves))
        self.last_compile_s = 0.0
        if sig not in self.executables:
            start = time.perf_counter()
            self.executables[sig] = self.jitted.lower(*args).compile()
            self.last_compile_s = time.perf_counter() - start
        return self.executables[sig]

    def __call__(self, *args):
        return self.compile(*args)(*args)


# Compiled loops per adapter object (held strongly, so ids are never reused while cached).
_COMPILED: dict[int, tuple[Any, dict]] = {}


def _compiled(lm, name, fn, opts) -> _Compiled:
    holder = _COMPILED.setdefault(id(lm), (lm, {}))[1]
    key = (name, tuple(sorted(opts.items())))
    if key not in holder:
        holder[key] = _Compiled(lambda *args: fn(lm, opts, *args))
    return holder[key]


def _timing(run: _Compiled, start: float) -> dict:
    total = time.perf_counter() - start
    return {"compile_s": run.last_compile_s, "decode_s": total - run.last_compile_s}


def _eos_ids(lm, config) -> tuple[jax.Array, int]:
    """EOS ids padded with -1 to a multiple of 4 (fewer shapes to compile), and their count."""
    ids = sorted({int(lm.eos_id), *map(int, config.extra_eos_ids)})
    return jnp.asarray(ids + [-1] * (_bucket(len(ids), 4) - len(ids)), jnp.int32), len(ids)


def decode_batch(lm, params, batch, config: DecodeConfig, *, seed: int = 0,
                 stop_ids: np.ndarray | None = None, compile_only: bool = False) -> Decoded:
    """Decodes one padded batch (adapter batch dict); no text. See `generate` for prompts.

    Ids in and out are the tokenizer's; an adapter with a task vocabulary (`lm.vocab_map`)
    decodes in its compact ids, mapped here on both sides. `compile_only` compiles the loop
    for this batch's shapes and decodes nothing (a server's warm-up: running each shape's
    loop to its last step would cost more than compiling it); the Decoded then holds only
    its timing."""
    vmap = getattr(lm, "vocab_map", None)
    if vmap is not None:
        batch, config, stop_ids = _to_task_ids(vmap, batch, config, stop_ids)
    table = jnp.asarray(np.full((4, 8), -3, np.int32) if stop_ids is None else stop_ids)
    eos, num_eos = _eos_ids(lm, config)
    if config.mode == "beam":
        dec = _decode_beam(lm, params, batch, config, eos, num_eos, compile_only)
    else:
        dec = _decode_sample(lm, params, batch, config, eos, table, seed, compile_only)
    if compile_only:
        return dec
    if vmap is not None:
        dec.tokens = vmap.to_full(dec.tokens)
        if dec.beam_tokens is not None:
            dec.beam_tokens = vmap.to_full(dec.beam_tokens)
    return dec


def _to_task_ids(vmap, batch, config, stop_ids):
    """Prompt, extra-EOS and stop ids in a task vocabulary; an EOS or stop id outside it can
    never be decoded, so it is dropped (stop rows get -3, which no token equals)."""
    batch = dict(batch, tokens=vmap.to_task(batch["tokens"]))
    kept = set(int(i) for i in vmap.ids)
    extra = tuple(int(vmap.to_task([i], count=False)[0]) for i in config.extra_eos_ids
                  if int(i) in kept)
    config = dataclasses.replace(config, extra_eos_ids=extra)
    if stop_ids is not None:
        stop_ids = np.asarray(stop_ids).copy()
        real = stop_ids >= 0
        inside = np.isin(stop_ids, vmap.ids) | ~real
        stop_ids[real] = vmap.to_task(stop_ids[real], count=False)
        stop_ids[~np.all(inside, axis=1)] = -3
    return batch, config, stop_ids


def _compile_only(run: _Compiled, args) -> Decoded:
    run.compile(*args)
    none = np.zeros((0,), np.float32)
    return Decoded(tokens=np.zeros((0, 0), np.int32), lengths=np.zeros((0,), np.int32),
                   logprobs=none, model_logprobs=none,
                   timing={"compile_s": run.last_compile_s, "decode_s": 0.0})


def _decode_sample(lm, params, batch, config, eos, table, seed, compile_only=False):
    bucket = config.max_new_tokens_bucket
    opts = dict(greedy=config.mode == "greedy", top_k=min(config.top_k, int(lm.vocab_size)),
                use_top_p=config.top_p < 1.0, num_samples=config.num_samples,
                greedy_first=config.greedy_first,
                max_new_tokens=bucket or config.max_new_tokens, pad_id=int(lm.pad_id))
    args = [params, batch, jax.random.key(seed), eos, table,
            jnp.float32(config.temperature or 1.0), jnp.float32(config.top_p)]
    if bucket is not None:
        # The length is then an argument, not part of the compiled loop's key.
        opts["limited"] = True
        args.append(jnp.int32(config.max_new_tokens))
    run = _compiled(lm, "sample", _sample_loop, opts)
    if compile_only:
        return _compile_only(run, args)
    start = time.perf_counter()
    out = jax.device_get(run(*args))
    # Columns past max_new_tokens are never written: cut to the shape an exact compile returns.
    out["tokens"] = out["tokens"][:, :config.max_new_tokens]
    return Decoded(tokens=out["tokens"], lengths=out["lengths"], logprobs=out["lp"],
                   model_logprobs=out["mlp"], timing=_timing(run, start))


def _decode_beam(lm, params, batch, config, eos, num_eos, compile_only=False):
    opts = dict(beam_size=config.beam_size, max_new_tokens=config.max_new_tokens,
                pad_id=int(lm.pad_id), num_eos=num_eos)
    run = _compiled(lm, "beam", beam_search.beam_loop, opts)
    args = (params, batch, eos, jnp.float32(config.alpha))
    if compile_only:
        return _compile_only(run, args)
    start = time.perf_counter()
    out = jax.device_get(run(*args))
    best = lambda x: x[:, 0]
    dec = Decoded(tokens=best(out["tokens"]), lengths=best(out["lengths"]),
                  logprobs=best(out["lp"]), model_logprobs=best(out["lp"]),
                  scores=best(out["scores"]), timing=_timing(run, start))
    if config.return_all_beams:
        dec.beam_tokens, dec.beam_scores, dec.beam_logprobs = (
            out["tokens"], out["scores"], out["lp"])
    return dec


# --------------------------------------------------------------------------- prompts and text


def is_encoder_decoder(lm) -> bool:
    """T5LM takes `encoder_tokens`; decoder-only adapters take left-padded `tokens` + `mask`."""
    flag = getattr(lm, "is_encoder_decoder", None)
    return bool(flag) if flag is not None else type(lm).__name__ == "T5LM"


def pad_prompts(token_lists: Sequence[Sequence[int]], *, encoder_decoder: bool, pad_id: int,
                bucket: int = 16, rows: int | None = None) -> dict:
    """Adapter batch from token lists; length rounded up to `bucket`, rows padded to `rows`.

    Rounding both keeps the set of compiled shapes small: a new prompt length only recompiles
    when it crosses a bucket boundary.
    """
    rows = rows or len(token_lists)
    if any(len(t) == 0 for t in token_lists):
        raise ValueError("pad_prompts: empty prompt (decoder-only models need at least BOS)")
    width = _bucket(max(len(t) for t in token_lists), bucket)
    tokens = np.full((rows, width), 0 if encoder_decoder else pad_id, np.int32)
    mask = np.zeros((rows, width), bool)
    for r, ids in enumerate(token_lists):
        span = slice(0, len(ids)) if encoder_decoder else slice(width - len(ids), width)
        tokens[r, span], mask[r, span] = ids, True
    for r in range(len(token_lists), rows):  # filler rows copy row 0 so they stay well-formed
        tokens[r], mask[r] = tokens[0], mask[0]
    if encoder_decoder:
        return {"encoder_tokens": tokens}
    return {"tokens": tokens, "mask": mask}


def texts_of(tokenizer, decoded: Decoded, eos_ids: Sequence[int], stop: Sequence[str]):
    """Decoded continuations: tokens up to the row's length, EOS dropped, cut at stop strings."""
    out = []
    for ids, n in zip(decoded.tokens, decoded.lengths):
        ids = [int(t) for t in ids[: int(n)]]
        while ids and ids[-1] in eos_ids:
            ids.pop()
        out.append(cut_at_stop(tokenizer.decode(ids), stop))
    return out


def _concat(parts: list[Decoded]) -> Decoded:
    fields = {}
    for f in dataclasses.fields(Decoded):
        vals = [getattr(p, f.name) for p in parts]
        if f.name == "timing":
            fields[f.name] = {k: sum(v[k] for v in vals) for k in vals[0]}
        elif vals[0] is None:
            fields[f.name] = None
        elif isinstance(vals[0], list):
            fields[f.name] = [x for v in vals for x in v]
        else:
            fields[f.name] = np.concatenate(vals, axis=0)
    return Decoded(**fields)


def _trim(dec: Decoded, rows: int) -> Decoded:
    cut = lambda name, v: v if v is None or name == "timing" else v[:rows]
    return Decoded(**{f.name: cut(f.name, getattr(dec, f.name)) for f in dataclasses.fields(Decoded)})


def generate(lm, params, tokenizer, prompts: Sequence[str], config: DecodeConfig, *,
             seed: int = 0, batch_size: int = 16, bucket: int = 16, add_bos: bool = True,
             progress: bool = False) -> Decoded:
    """Decodes text prompts in fixed-size batches; rows are prompt-major (see `Decoded`).

    `add_bos` applies to decoder-only models (Gemma expects BOS, as transformers adds it).
    Each batch gets its own seed (seed + batch index) so results do not depend on batch order.
    """
    from tqdm import tqdm

    if not prompts:
        raise ValueError("generate: no prompts given")
    enc_dec = is_encoder_decoder(lm)
    if enc_dec:  # T5 encoders are trained on EOS-ended inputs
        ids = [list(tokenizer.encode(p)) + [int(lm.eos_id)] for p in prompts]
    else:
        ids = [list(tokenizer.encode(p, add_bos=add_bos)) for p in prompts]
    table = stop_table(tokenizer, config.stop)
    eos = sorted({int(lm.eos_id), *config.extra_eos_ids})
    per_row = 1 if config.mode == "beam" else config.num_samples
    parts = []
    starts = range(0, len(ids), batch_size)
    for n, start in enumerate(tqdm(starts, desc="decode", unit="batch", disable=not progress)):
        chunk = ids[start: start + batch_size]
        batch = pad_prompts(chunk, encoder_decoder=enc_dec, pad_id=int(lm.pad_id),
                            bucket=bucket, rows=batch_size)
        dec = _trim(decode_batch(lm, params, batch, config, seed=seed + n, stop_ids=table),
                    len(chunk) * per_row)
        dec.texts = texts_of(tokenizer, dec, eos, config.stop)
        parts.append(dec)
    return _concat(parts)
