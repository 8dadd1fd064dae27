"""Corrector inference: (source, candidate pool) -> corrected text, for evaluation and serving.

There is one code path: the input text comes from `corrector_input.build_corrector_input` (what
the SeqIO task runs during training), it is tokenized with the run's vocabulary the way the
feature converters do (enc-dec: text + EOS; decoder-only: BOS + text), padded to one of a fixed
set of decode shapes (lmcor.inference.settings) and decoded with `lmcor.decode`'s beam search in
`Corrector.decode_padded`, which evaluation, warm-up and the server's decoder all call.

A MODEL_DIR holds what `lmcor train` writes, or a released adapter (lmcor.inference.run_dir
reads both). Its Gin config names the model (`train.model`), the vocabulary
(`task_vocabulary.*`), the preprocessing (`corrector_options.*`) and, optionally, inference
settings (`corrector_settings.*`).
"""
import dataclasses
import threading
import time
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import jax
from absl import logging
from flax import linen as nn

from lmcor import decode
from lmcor.checkpoints.loader import decode_adapter
from lmcor.data.corrector_input import CorrectorOptions, build_corrector_input
from lmcor.inference.run_dir import configured_parts, trained_params
from lmcor.inference.settings import (CorrectorSettings, InputTooLongError, row_bucket,
                                      row_buckets)


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
            alpha=self.settings.alpha, temperature=self.settings.temperature,
            top_p=self.settings.top_p, eos_penalty=self.settings.eos_penalty)
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

    def decode_padded(self, token_lists: Sequence[Sequence[int]], rows: int,
                      width: Optional[int] = None, max_new_tokens: Optional[int] = None,
                      compile_only: bool = False) -> decode.Decoded:
        """The one decode call (beam search, or sampling when corrector_settings.temperature >
        0): prepared inputs padded to `rows` x `width` (default: the bucket of the longest
        input), decoded for `max_new_tokens` (default: the settings') -> the batch's
        `decode.Decoded`; `compile_only` compiles that shape and runs nothing."""
        width = width or self.width_bucket(max(len(t) for t in token_lists))
        # pad_prompts rounds the width up to a multiple of `bucket`: exactly `width` here.
        batch = decode.pad_prompts(token_lists, encdec=self.encdec,
                                   pad_id=int(self.lm.pad_id), bucket=width, rows=rows)
        config = self.decode_config if max_new_tokens is None else dataclasses.replace(
            self.decode_config, max_new_tokens=max_new_tokens)
        return decode.decode_batch(self.lm, self.params, batch, config,
                                   seed=self.settings.seed, compile_only=compile_only)

    def decode_ids(self, token_lists: Sequence[Sequence[int]], rows: Optional[int] = None,
                   compile_only: bool = False):
        """Beam-search one batch of prepared inputs -> (texts, compile seconds);
        `compile_only` compiles that batch's shape and returns no texts."""
        rows = max(rows or len(token_lists), len(token_lists))
        dec = self.decode_padded(token_lists, rows, compile_only=compile_only)
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
            dec = self.decode_padded([[int(self.lm.eos_id)] * width], rows, width,
                                     compile_only=True)
            compile_s += float(dec.timing["compile_s"])
        out = {"shapes": len(shapes), "executables": self.compiled_executables(),
               "compile_s": round(compile_s, 1), "total_s": round(time.perf_counter() - start, 1)}
        logging.info("corrector warm-up: %s", out)
        return out
