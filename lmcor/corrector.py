"""Corrector inference: (source, candidate pool) -> corrected text, for evaluation and serving.

There is one code path: the input text comes from `corrector_input.build_corrector_input` (what
the SeqIO task runs during training), it is tokenized with the run's vocabulary the way the
feature converters do (enc-dec: text + EOS; decoder-only: BOS + text), and decoded with
`lmcor.decode`'s beam search. Every batch is padded to one of a fixed set of decode shapes
(`Corrector.decode_shapes`: power-of-two row counts x geometrically spaced widths), which
`Corrector.warmup` compiles up front, so a server never compiles while it is serving.

A MODEL_DIR holds what `lmcor train` writes, or a released adapter (lmcor.model_dir reads
both). Its Gin config names the model (`train.model`), the vocabulary (`task_vocabulary.*`),
the preprocessing (`corrector_options.*`) and, optionally, inference settings
(`corrector_settings.*`).
"""
import dataclasses
import os
import threading
import time
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import gin
import jax
from absl import logging
from flax import linen as nn

from lmcor.checkpoints.loader import decode_adapter
from lmcor import decode
from lmcor.data.corrector_input import VARIANTS, CorrectorOptions, build_corrector_input
# restore_params and trained_identity are read from here too (export, tests).
from lmcor.model_dir import (bound, checkpoint_step, parse_run_config,  # noqa: F401
                             restore_params, trained_identity, trained_params)
from lmcor.paths import CHECKPOINTS, TASK_VOCAB


class InputTooLongError(ValueError):
    """The corrector input exceeds the configured token limit (the server answers 413)."""

    def __init__(self, num_tokens: int, limit: int):
        super().__init__(f"corrector input has {num_tokens} tokens; the limit is {limit} "
                         f"(corrector_settings.max_input_tokens)")
        self.num_tokens, self.limit = num_tokens, limit


@gin.configurable("corrector_settings")
@dataclasses.dataclass(frozen=True)
class CorrectorSettings:
    """Inference settings (beam size, limits, decode widths); Gin binds them as
    `corrector_settings.beam_size = 2` etc."""
    variant: str = "lmcor"
    beam_size: int = 4
    alpha: float = 0.6
    max_decode_tokens: int = 128
    max_input_tokens: int = 1024
    length_bucket: int = 32
    length_growth: float = 1.25
    # A task-vocabulary corrector reads and writes every piece of the inputs it corrects, not
    # only its training data's (Corrector.correct; `widened_vocabulary`).
    widen_vocab: bool = True
    # Decode the longest inputs first, in batches of like lengths (decode.length_order): for
    # inputs of very different lengths (WMT paragraphs). It changes which inputs share a batch.
    order_by_length: bool = False

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"corrector_settings.variant={self.variant!r}; expected one of "
                             f"{VARIANTS}")
        for name in ("beam_size", "max_decode_tokens", "max_input_tokens", "length_bucket",
                     "length_growth"):
            if getattr(self, name) < 1:
                raise ValueError(f"corrector_settings.{name}={getattr(self, name)}; expected >= 1")

    @property
    def widths(self) -> Tuple[int, ...]:
        """Input widths a batch is padded to: multiples of `length_bucket`, each at least
        `length_growth` times the one before, up to the first that holds `max_input_tokens`.

        Decode time grows with the padded width and start-up compile time with the number of
        widths; geometric spacing bounds the padding to a fraction (growth - 1) of the input
        while the count of widths stays logarithmic in `max_input_tokens`.
        """
        step = self.length_bucket
        top = -(-self.max_input_tokens // step) * step
        widths = [min(step, top)]
        while widths[-1] < top:
            grown = -(-int(widths[-1] * self.length_growth) // step) * step
            widths.append(min(top, max(widths[-1] + step, grown)))
        return tuple(widths)


def row_bucket(n: int, max_rows: int) -> int:
    """Rows a batch of n is padded to: the next power of two, capped at max_rows."""
    rows = 1
    while rows < n:
        rows *= 2
    return max(n, min(rows, max_rows))


def row_buckets(max_rows: int) -> Tuple[int, ...]:
    """Every row count `row_bucket` gives for batches of 1..max_rows."""
    return tuple(sorted({row_bucket(n, max_rows) for n in range(1, max_rows + 1)}))


def pool_record(source: str, candidates: Sequence[Any], example_id: str = "request") -> dict:
    """A pool-format record from a source and candidates (texts or pool candidate dicts);
    bare texts count as greedy first, then samples, as the sampling job orders them."""
    cands = []
    for i, c in enumerate(candidates):
        if isinstance(c, str):
            c = {"text": c, "generator": "unknown", "prompt_id": None,
                 "decoding": "greedy" if i == 0 else "sample", "temperature": 0.0,
                 "logprob": None}
        cands.append(c)
    return {"id": example_id, "source": source, "references": [], "candidates": cands, "meta": {}}


class Corrector:
    """A trained corrector ready to decode. Thread-safe to prepare inputs; decode from one
    thread at a time (the server's batcher)."""

    def __init__(self, model, params, vocab, options: Optional[CorrectorOptions] = None,
                 settings: Optional[CorrectorSettings] = None, base_embedding=None):
        """`base_embedding`: the base model's whole embedding table, from which a
        task-vocabulary corrector takes the rows of input pieces its vocabulary lacks."""
        self.lm = decode_adapter(model)
        self.base_embedding = base_embedding
        self.params = jax.device_put(nn.unbox(params))
        self.vocab = vocab
        self.options = options or CorrectorOptions()
        self.settings = settings or CorrectorSettings()
        self.encdec = decode.is_encdec(self.lm)
        self.decode_config = decode.DecodeConfig(
            max_new_tokens=self.settings.max_decode_tokens, beam_size=self.settings.beam_size,
            alpha=self.settings.alpha)
        self._lock = threading.Lock()
        self.truncated_tokens = 0  # removed by the training-time token budget, summed

    @classmethod
    def from_model_dir(cls, model_dir: str, gin_bindings: Sequence[str] = (),
                       step: Optional[int] = None,
                       overrides: Optional[Callable[[], None]] = None):
        """Loads the run in MODEL_DIR (see module doc); `gin_bindings` and `overrides` (a
        command line's Gin flags) add to or replace its config.gin (`parse_run_config`)."""
        model, vocab, options, settings = configured_parts(model_dir, gin_bindings, overrides)
        model = model.attach(model_dir)
        params = trained_params(model_dir, model, step)
        return cls(model.decode_adapter(), model.decode_params(params), vocab, options, settings,
                   model.base_embedding)

    # ------------------------------------------------------------------ inputs

    def build_input(self, record: Mapping[str, Any]) -> str:
        text, report = build_corrector_input(record, self.settings.variant, self.options,
                                             self.vocab, allow_no_candidates=True)
        if report.truncated_tokens:
            with self._lock:
                self.truncated_tokens += report.truncated_tokens
        return text

    def tokenize(self, text: str) -> List[int]:
        ids = [int(i) for i in self.vocab.encode(text)]
        if self.encdec:
            ids.append(int(self.lm.eos_id))  # seqio's add_eos on `inputs`
        else:  # the prefix-LM converter feeds BOS + inputs (no EOS)
            ids.insert(0, int(getattr(self.lm.module.config, "bos_id", 2)))
        if len(ids) > self.settings.max_input_tokens:
            raise InputTooLongError(len(ids), self.settings.max_input_tokens)
        return ids

    def prepare(self, record: Mapping[str, Any]) -> List[int]:
        """Token ids of the corrector input for one pool record; may raise InputTooLongError."""
        return self.tokenize(self.build_input(record))

    # ------------------------------------------------------------------ decoding

    def width_bucket(self, num_tokens: int) -> int:
        """The decode width an input of num_tokens is padded to."""
        for width in self.settings.widths:
            if num_tokens <= width:
                return width
        raise InputTooLongError(num_tokens, self.settings.max_input_tokens)

    def decode_shapes(self, max_rows: int) -> List[Tuple[int, int]]:
        """Every (rows, width) `decode_ids` pads to for batches of at most max_rows."""
        return [(r, w) for r in row_buckets(max_rows) for w in self.settings.widths]

    def compiled_executables(self) -> int:
        """Decode executables compiled so far for this corrector's model (any shape, any
        mode); a server whose count grows after warm-up is compiling while it serves."""
        return decode.compiled_count(self.lm)

    def decode_ids(self, token_lists: Sequence[Sequence[int]], rows: Optional[int] = None,
                   compile_only: bool = False):
        """Beam-search one batch of prepared inputs -> (texts, compile seconds);
        `compile_only` compiles that batch's shape and returns no texts."""
        rows = max(rows or len(token_lists), len(token_lists))
        width = self.width_bucket(max(len(t) for t in token_lists))
        # pad_prompts rounds the width up to a multiple of `bucket`: exactly `width` here.
        batch = decode.pad_prompts(token_lists, encdec=self.encdec,
                                   pad_id=int(self.lm.pad_id), bucket=width, rows=rows)
        dec = decode.decode_batch(self.lm, self.params, batch, self.decode_config,
                                  compile_only=compile_only)
        if compile_only:
            return [], float(dec.timing["compile_s"])
        n = len(token_lists)
        texts = decode.texts_of(self.vocab, decode.Decoded(
            tokens=dec.tokens[:n], lengths=dec.lengths[:n], logprobs=dec.logprobs[:n],
            model_logprobs=dec.model_logprobs[:n]), [int(self.lm.eos_id)], ())
        return texts, float((dec.timing or {}).get("compile_s", 0.0))

    def correct(self, records: Sequence[Mapping[str, Any]], batch_size: int = 16,
                progress: bool = False, done: Sequence[str] = (),
                on_batch: Optional[Callable[[List[str]], None]] = None) -> List[str]:
        """Corrected text per pool record (evaluation's entry point), decoded in batches of
        `batch_size` records. `done`: the outputs of the first records from an earlier call on
        the same records and batch size (whole batches), which are not decoded again; the rest
        come out as that call would have decoded them. `on_batch(outputs so far)` is called
        after each batch, for a caller that saves them. With `order_by_length`, "first" and "so
        far" follow the decode order, and the result is in record order."""
        from tqdm import tqdm

        if len(done) % batch_size and len(done) != len(records):
            raise ValueError(f"{len(done)} outputs already decoded is not a whole number of "
                             f"batches of {batch_size}")
        ids = [self.prepare(r) for r in records]
        order = decode.length_order(ids, self.settings.order_by_length)
        ids = [ids[i] for i in order]
        task_map = getattr(self.lm, "vocab_map", None)
        narrow = self.lm, self.params
        if task_map is not None and ids:
            self.last_oov = task_map.oov_of(ids)
            if self.settings.widen_vocab:
                # From every input, the decoded ones too: it is what makes a batch decode the
                # same in a resumed call as in one call over all records.
                self.lm, self.params = self.widened_vocabulary(ids)
            self.last_oov["widened_by"] = self.lm.vocab_map.size - task_map.size
            logging.info("corrector inputs: pieces outside the task vocabulary: %s (%s)",
                         self.last_oov, "read from the base embedding"
                         if self.last_oov["widened_by"] else "read as unknown")
        out: List[str] = list(done)
        try:
            for start in tqdm(range(len(out), len(ids), batch_size), desc="correct",
                              unit="batch", initial=len(out) // batch_size,
                              total=-(-len(ids) // batch_size), disable=not progress):
                chunk = ids[start:start + batch_size]
                out.extend(self.decode_ids(chunk, row_bucket(len(chunk), batch_size))[0])
                if on_batch is not None:
                    on_batch(out)
        finally:
            self.lm, self.params = narrow
        if self.truncated_tokens:
            logging.info("corrector inputs: %d tokens removed by the token budget so far",
                         self.truncated_tokens)
        return decode.in_input_order(out, order)

    def widened_vocabulary(self, token_lists: Sequence[Sequence[int]]):
        """(decode adapter, params) whose task vocabulary also holds every piece of these
        inputs (lmcor.models.vocab_widening.widen_task_vocab). An input's output can depend on
        which pieces the other inputs of the call hold, so `correct` widens once per call."""
        from lmcor.models.vocab_widening import widen_task_vocab

        return widen_task_vocab(self.lm, self.params, self.base_embedding, token_lists)

    def warmup(self, max_rows: int) -> dict:
        """Compiles the decode at every shape of `decode_shapes(max_rows)`, so that batches of
        up to max_rows inputs of any accepted length never compile later -> counts and
        seconds."""
        from tqdm import tqdm

        shapes, start, compile_s = self.decode_shapes(max_rows), time.perf_counter(), 0.0
        for rows, width in tqdm(shapes, desc="corrector warm-up", unit="shape"):
            compile_s += self.decode_ids([[int(self.lm.eos_id)] * width], rows,
                                         compile_only=True)[1]
        out = {"shapes": len(shapes), "executables": self.compiled_executables(),
               "compile_s": round(compile_s, 1), "total_s": round(time.perf_counter() - start, 1)}
        logging.info("corrector warm-up: %s", out)
        return out


# ---------------------------------------------------------------------- loading a MODEL_DIR


def configured_parts(model_dir: str, gin_bindings: Sequence[str] = (),
                     overrides: Optional[Callable[[], None]] = None):
    """(model factory result, vocabulary, CorrectorOptions, CorrectorSettings) from Gin."""
    from lmcor.data.vocab import task_vocabulary
    from lmcor.training import models

    ref = parse_run_config(model_dir, gin_bindings, overrides)
    model = ref.scoped_configurable_fn() if ref is not None else models.t5_model()
    return model, task_vocabulary(), CorrectorOptions(), CorrectorSettings()


def check_model_dir(model_dir: str, gin_bindings: Sequence[str] = (),
                    overrides: Optional[Callable[[], None]] = None) -> None:
    """Refuses, naming the file, a MODEL_DIR that cannot be decoded, from what a load would
    find only after minutes of work: no finished checkpoint, released weights that are not the
    ones released (sha256), a config that does not parse, a task vocabulary that is missing or
    damaged, base weights other than the run's (base_weights.json). Reads no weights (hashes
    the base file); leaves the run's config parsed in Gin."""
    from lmcor.checkpoints import adapter
    from lmcor.data.task_vocab import TaskVocab
    from lmcor.training import peft

    if adapter.is_adapter_dir(model_dir):
        adapter.verify(model_dir)
    else:
        checkpoint_step(os.path.join(model_dir, CHECKPOINTS))
    model = parse_run_config(model_dir, gin_bindings, overrides)
    factory = model.configurable.name if model is not None else None
    if factory != "gemma_model":
        return
    if bound("gemma_model.vocab") == "task":
        if not TaskVocab.exists(model_dir):
            raise FileNotFoundError(f"{os.path.join(model_dir, TASK_VOCAB)}: no such file "
                                    "(the run's config.gin sets gemma_model.vocab = 'task')")
        TaskVocab.load(model_dir)
    base = _configured_base()
    if base is not None:
        peft.check_base(model_dir, peft.base_identity(base))


def _configured_base() -> Optional[str]:
    """The file or folder of the base weights gemma_model loads (models.gemma_model's spec)."""
    from lmcor.checkpoints.bundled import BUNDLED
    from lmcor.checkpoints.loader import gemma_checkpoint

    gguf, safetensors = bound("gemma_model.gguf"), bound("gemma_model.safetensors")
    if gguf:
        spec = BUNDLED if gguf == "bundled" else f"gguf:{gguf}"
    elif safetensors:
        spec = f"safetensors:{safetensors}"
    else:
        return None
    return gemma_checkpoint(spec, "gemma_model.gguf" if gguf else "gemma_model.safetensors").path
