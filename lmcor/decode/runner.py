"""Decoding entry points: `decode_batch` (one padded batch) and `generate` (text prompts).

They pick the loop for the configured mode (`sampling.sample_loop` or `beam.beam_loop`) and
run it through its cached executable (`executables`), over the decode-adapter contract
(`GemmaLM`, `T5LM`).

Every mode runs its whole token loop inside one `jax.jit` (`lax.while_loop` over a static
maximum length, leaving early once every row is finished), so a batch costs one host round trip.

Log-probabilities returned per sequence (sums over the generated tokens, EOS included):
  * `logprobs`       - greedy and beam: under the model's unscaled distribution;
                       sampling: under the distribution actually sampled from (after
                       temperature, top-k and top-p), i.e. the probability of drawing it.
  * `model_logprobs` - always under the model's unscaled distribution.
With `eos_penalty` set, greedy and beam `logprobs` (and beam's `model_logprobs`) are under the
distribution decoded from, with EOS lowered; greedy and sampling `model_logprobs` stay the
model's own.
Beam search also returns `scores`: the log-prob divided by the GNMT length penalty
((5 + length) / 6) ** alpha, which is what the beams are ranked by.
"""
import dataclasses
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lmcor.decode import beam, executables
from lmcor.decode.arrays import round_up
from lmcor.decode.sample_loop import sample_loop
from lmcor.decode.text import is_encdec, pad_prompts, stop_table, texts_of


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
    # Lowers every EOS logit by this much before each choice (all modes): > 0 writes longer
    # outputs. A static part of the compiled loop, so 0 leaves the loop as it was.
    eos_penalty: float = 0.0

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


def _timing(run: executables.Compiled, start: float) -> dict:
    total = time.perf_counter() - start
    return {"compile_s": run.last_compile_s, "decode_s": total - run.last_compile_s}


def _eos_ids(lm, config) -> tuple[jax.Array, int]:
    """EOS ids padded with -1 to a multiple of 4 (fewer shapes to compile), and their count."""
    ids = sorted({int(lm.eos_id), *map(int, config.extra_eos_ids)})
    return jnp.asarray(ids + [-1] * (round_up(len(ids), 4) - len(ids)), jnp.int32), len(ids)


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


def _compile_only(run: executables.Compiled, args) -> Decoded:
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
                max_new_tokens=bucket or config.max_new_tokens, pad_id=int(lm.pad_id),
                eos_penalty=float(config.eos_penalty))
    args = [params, batch, jax.random.key(seed), eos, table,
            jnp.float32(config.temperature or 1.0), jnp.float32(config.top_p)]
    if bucket is not None:
        # The length is then an argument, not part of the compiled loop's key.
        opts["limited"] = True
        args.append(jnp.int32(config.max_new_tokens))
    run = executables.loop_for(lm, "sample", sample_loop, opts)
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
                pad_id=int(lm.pad_id), num_eos=num_eos, eos_penalty=float(config.eos_penalty))
    run = executables.loop_for(lm, "beam", beam.beam_loop, opts)
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
    return Decoded(**{f.name: cut(f.name, getattr(dec, f.name))
                      for f in dataclasses.fields(Decoded)})


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
    encdec = is_encdec(lm)
    if encdec:  # T5 encoders are trained on EOS-ended inputs
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
        batch = pad_prompts(chunk, encdec=encdec, pad_id=int(lm.pad_id),
                            bucket=bucket, rows=batch_size)
        dec = _trim(decode_batch(lm, params, batch, config, seed=seed + n, stop_ids=table),
                    len(chunk) * per_row)
        dec.texts = texts_of(tokenizer, dec, eos, config.stop)
        parts.append(dec)
    return _concat(parts)
