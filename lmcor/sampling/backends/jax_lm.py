"""Gemma 3 in JAX as a sampling backend; `checkpoint` is a spec of lmcor.checkpoints.loader (a
GGUF file, a folder of HF safetensors, or "gemma3-270m", the bundled 270M).

Prompts are left-padded into fixed row counts and length buckets, so a whole pool compiles only a
handful of shapes; the job already sorts each shard by prompt length to keep padding low. Greedy
outputs are decoded in batches. Samples use the example's own seed: by default each example's
`num_samples` rows form one batch (so a sample never depends on which examples shared its batch);
`per_example_seed=False` decodes `batch_size` examples' samples together (batch_size x num_samples
rows) for speed, with a seed derived from the batch's ids: still reproducible and resumable, since
shards are regenerated whole and batches within a shard are a function of the shard and batch
size, which the manifest then pins. `shared_prefill=True` decodes each input's greedy output and
its samples in one call (greedy as the first row), so the prompt is prefilled once instead of
twice: faster when prompts are long next to the outputs, as with 5-shot prompts. With
`model_parallel > 1` the parameters are sharded over a (data, model) mesh by their logical axes.
`quantize="int8"` decodes with int8 matmuls (`lmcor generate --quantize`): faster on CPU, but the
outputs differ from the float model's, so it is part of the pool's fingerprint.
`bucket_new_tokens=True` compiles each decode for `max_new_tokens` rounded up to a power of two
(at least 16) and stops at the asked length, so callers with many lengths (`lmcor serve`)
compile once per bucket; the tokens are unchanged, but the longer cache can move log-probs by
rounding, so it too is part of the fingerprint.
"""
import logging
import os
from typing import Dict, List, Optional, Sequence

import gin

from lmcor.sampling.backends.base import Backend, Generation, Request, SamplingParams
from lmcor.checkpoints.bundled import BUNDLED

log = logging.getLogger(__name__)


@gin.configurable
class JaxBackend(Backend):
    def __init__(self, checkpoint: str = BUNDLED, dtype: str = "float32", batch_size: int = 8,
                 bucket: int = 32, per_example_seed: bool = True, model_parallel: int = 1,
                 shared_prefill: bool = False, quantize: Optional[str] = None,
                 name: Optional[str] = None, bucket_new_tokens: bool = False):
        if quantize not in (None, "int8"):
            raise ValueError(f"JaxBackend.quantize must be None or 'int8', got {quantize!r}")
        self.checkpoint, self.dtype, self.quantize = checkpoint, dtype, quantize
        self.batch_size, self.bucket = batch_size, bucket
        self.per_example_seed, self.model_parallel = per_example_seed, model_parallel
        self.shared_prefill, self.bucket_new_tokens = shared_prefill, bucket_new_tokens
        self._name = name or os.path.splitext(os.path.basename(checkpoint.rstrip("/")))[0]
        self._lm = self._params = self._tokenizer = None
        self.reset_stats()

    def reset_stats(self):
        """Zeroes the counters, so a backend reused for several pools reports each on its own."""
        self._stats = {"prompt_tokens": 0, "padded_positions": 0, "prompt_positions": 0,
                       "generated_tokens": 0, "compile_s": 0.0, "decode_s": 0.0}

    @property
    def generator(self) -> str:
        return self._name

    def describe(self) -> Dict:
        return {**super().describe(), "checkpoint": self.checkpoint, "dtype": self.dtype,
                "per_example_seed": self.per_example_seed, "bucket": self.bucket,
                "batch_size": self.batch_size, "model_parallel": self.model_parallel,
                "shared_prefill": self.shared_prefill, "quantize": self.quantize,
                **({"bucket_new_tokens": True} if self.bucket_new_tokens else {})}

    def fingerprint(self) -> Dict:
        layout = {} if self.per_example_seed else {"batch_size": self.batch_size}
        # Sharing the prefill draws the samples from other random streams: another pool.
        shared = {"shared_prefill": True} if self.shared_prefill else {}
        quant = {"quantize": self.quantize} if self.quantize else {}
        bucketed = {"bucket_new_tokens": True} if self.bucket_new_tokens else {}
        return {**super().fingerprint(), "dtype": self.dtype,
                "per_example_seed": self.per_example_seed, **layout, **shared, **quant,
                **bucketed}

    def stats(self) -> Dict:
        s = dict(self._stats)
        s["padding_fraction"] = round(s["padded_positions"] / max(s["prompt_positions"], 1), 4)
        return s

    @property
    def tokenizer(self):
        self._load()
        return self._tokenizer

    def _load(self):
        if self._lm is not None:
            return
        # Imported on first use: with the loader come JAX and the model modules, seconds that
        # runs/sample.gin, which imports every backend, should not cost a job sampling over HTTP.
        # They register no Gin configurable, so the job's locked config does not refuse them.
        from lmcor.checkpoints import loader  # noqa: PLC0415
        ckpt = loader.gemma_checkpoint(self.checkpoint, where="JaxBackend.checkpoint")
        log.info("loading %s", ckpt.path)
        self._lm, params, self._tokenizer = loader.load_gemma_lm(ckpt, self.dtype, self.quantize)
        self._params = self._place(params)

    def _place(self, params):
        """Params sharded over a (data, model) mesh by the logical axes the module declares."""
        import jax  # noqa: PLC0415
        import jax.numpy as jnp  # noqa: PLC0415
        from flax import linen as nn  # noqa: PLC0415

        from lmcor.models import partitioning  # noqa: PLC0415

        params = nn.meta.unbox(params)
        if self.model_parallel <= 1:
            return params
        # Checkpoint loaders return plain arrays; the logical names live on the module's init.
        abstract = jax.eval_shape(lambda: self._lm.module.init(jax.random.key(0),
                                                               jnp.zeros((1, 1), jnp.int32)))
        mesh = partitioning.make_mesh(model=self.model_parallel)
        logical = nn.get_partition_spec(abstract)
        return jax.device_put(params, partitioning.logical_to_sharding(logical, params, mesh))

    # ------------------------------------------------------------------ decoding

    def _new_tokens_bucket(self, max_new_tokens: int) -> Optional[int]:
        """The decode length compiled for `max_new_tokens`: a power of two, so n lengths cost
        about log2(n) compiles; at least 16, since short lengths save little decode time."""
        if not self.bucket_new_tokens:
            return None
        return max(16, 1 << (max_new_tokens - 1).bit_length())

    def _decode(self, ids: List[List[int]], config, seed: int, rows: int):
        from lmcor import decode  # noqa: PLC0415

        batch = decode.pad_prompts(ids, encdec=False, pad_id=int(self._lm.pad_id),
                                   bucket=self.bucket, rows=rows)
        width = batch["tokens"].shape[1]
        self._stats["prompt_tokens"] += sum(map(len, ids))
        self._stats["prompt_positions"] += width * rows
        self._stats["padded_positions"] += width * rows - sum(map(len, ids))
        dec = decode.decode_batch(self._lm, self._params, batch, config, seed=seed % 2 ** 31,
                                  stop_ids=decode.stop_table(self._tokenizer, config.stop))
        n = len(ids) * config.num_samples
        eos = sorted({int(self._lm.eos_id), *config.extra_eos_ids})
        texts = decode.texts_of(self._tokenizer, dec, eos, config.stop)[:n]
        for k in ("compile_s", "decode_s"):
            self._stats[k] += float((dec.timing or {}).get(k, 0.0))
        lengths = [int(x) for x in dec.lengths[:n]]
        self._stats["generated_tokens"] += sum(lengths)
        return texts, lengths, [float(x) for x in dec.model_logprobs[:n]]

    def _greedy(self, ids, reqs, params) -> List[Generation]:
        from lmcor.decode import DecodeConfig  # noqa: PLC0415

        cfg = DecodeConfig(max_new_tokens=params.max_new_tokens, stop=params.stop,
                           max_new_tokens_bucket=self._new_tokens_bucket(params.max_new_tokens))
        out = []
        for start in range(0, len(ids), self.batch_size):
            texts, lengths, lps = self._decode(ids[start:start + self.batch_size], cfg, 0,
                                               self.batch_size)
            out += [Generation(t, "greedy", 0.0, lp, n) for t, n, lp in zip(texts, lengths, lps)]
        return out

    def _samples(self, ids, reqs, params, with_greedy: bool = False) -> List[List[Generation]]:
        """Each input's samples; `with_greedy` puts its greedy output first, from the same call
        (one prefill for both)."""
        from lmcor.decode import DecodeConfig  # noqa: PLC0415
        from lmcor.sampling.prompts import keyed_seed  # noqa: PLC0415

        n = params.num_samples + with_greedy
        cfg = DecodeConfig(max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                           top_p=params.top_p, num_samples=n, stop=params.stop,
                           greedy_first=with_greedy,
                           max_new_tokens_bucket=self._new_tokens_bucket(params.max_new_tokens))
        step = 1 if self.per_example_seed else self.batch_size
        out = []
        for start in range(0, len(ids), step):
            chunk = reqs[start:start + step]
            seed = chunk[0].seed if step == 1 else keyed_seed(chunk[0].seed, *[r.id for r in chunk])
            texts, lengths, lps = self._decode(ids[start:start + step], cfg, seed, step)
            for j in range(len(chunk)):
                gens = [Generation(texts[k], "sample", params.temperature, lps[k], lengths[k])
                        for k in range(j * n, (j + 1) * n)]
                if with_greedy:
                    k = j * n
                    gens[0] = Generation(texts[k], "greedy", 0.0, lps[k], lengths[k])
                out.append(gens)
        return out

    def generate(self, requests: Sequence[Request],
                 params: SamplingParams) -> List[List[Generation]]:
        self._load()
        ids = [list(self._tokenizer.encode(r.prompt, add_bos=True)) for r in requests]
        if self.shared_prefill and params.greedy and params.num_samples:
            return self._samples(ids, requests, params, with_greedy=True)
        greedy = self._greedy(ids, requests, params) if params.greedy else [None] * len(ids)
        samples = (self._samples(ids, requests, params) if params.num_samples
                   else [[] for _ in ids])
        return [([g] if g is not None else []) + s for g, s in zip(greedy, samples)]
