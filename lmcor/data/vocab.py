"""Vocabularies: a SentencePiece model trained on task text (T5 from scratch) and Gemma 3's.

Tasks are registered at import time, before Gin has been parsed, so their features hold
`TASK_VOCAB`, a SeqIO vocabulary that resolves to the configured one on first use:

    task_vocabulary.kind = "sentencepiece"      # or "gemma"
    task_vocabulary.spm_model = "/path/spm.model"
    task_vocabulary.gguf_path = "/path/gemma-3-270m.gguf"
"""
import functools
import hashlib
import io
import os
from typing import Iterable, Optional, Sequence

import gin
import seqio
import sentencepiece as spm

from lmcor.io_utils import atomic_write_bytes, atomic_write_text

# T5's id layout, which seqio assumes: pad 0, eos 1, unk 2, no bos.
_T5_IDS = {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": -1}


def cache_dir() -> str:
    return os.environ.get("LMCOR_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "lmcor"))


def _content_key(texts: Sequence[str], settings: dict) -> str:
    h = hashlib.sha256(repr(sorted(settings.items())).encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def pool_texts(records: Iterable[dict]) -> Iterable[str]:
    """Every text a corrector reads or writes: sources, references and candidates."""
    for rec in records:
        yield rec["source"]
        yield from rec["references"]
        yield from (c["text"] for c in rec["candidates"])


def train_task_sentencepiece(texts: Iterable[str], vocab_size: int, out_path: str, *,
                             model_type: str = "unigram",
                             user_defined_symbols: Sequence[str] = ("<sep>",),
                             character_coverage: float = 1.0) -> str:
    """Train a SentencePiece model on `texts`, write it atomically to `out_path`, return the path.

    Deterministic (one thread, no sampling, input order kept) and cached: `out_path.sha256`
    records a hash of the texts and settings, and a matching model is not retrained. The
    separator is a user-defined symbol, so it is one token, never split.
    """
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"{out_path}: no non-empty text to train a SentencePiece model on")
    settings = {"vocab_size": vocab_size, "model_type": model_type,
                "user_defined_symbols": ",".join(user_defined_symbols),
                "character_coverage": character_coverage, "version": spm.__version__}
    key = _content_key(texts, settings)
    key_path = out_path + ".sha256"
    if os.path.isfile(out_path) and os.path.isfile(key_path):
        with open(key_path, encoding="utf-8") as f:
            if f.read().strip() == key:
                return out_path
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage, num_threads=1,
        input_sentence_size=0, shuffle_input_sentence=False, hard_vocab_limit=False,
        byte_fallback=True, user_defined_symbols=list(user_defined_symbols),
        minloglevel=2, **_T5_IDS)
    atomic_write_bytes(out_path, model.getvalue())
    atomic_write_text(key_path, key + "\n")
    return out_path


def gemma_vocabulary(gguf_path: str, tokenizer=None) -> seqio.SentencePieceVocabulary:
    """Gemma 3's tokenizer, rebuilt from the GGUF's vocabulary, as a SeqIO vocabulary.

    The model proto is cached under cache_dir(), keyed by the GGUF's path, size and mtime:
    rebuilding it parses 262k pieces. Pass `tokenizer` (from gemma_tokenizer) if you have one.
    """
    stat = os.stat(gguf_path)
    key = f"{os.path.abspath(gguf_path)}:{stat.st_size}:{stat.st_mtime_ns}"
    path = os.path.join(cache_dir(), "spm", f"gemma-{hashlib.sha256(key.encode()).hexdigest()[:16]}.model")
    if not os.path.isfile(path):
        if tokenizer is None:
            from lmcor.checkpoints.gguf import gemma_tokenizer  # heavy; only Gemma users pay

            tokenizer = gemma_tokenizer(gguf_path)
        atomic_write_bytes(path, tokenizer.sentencepiece_model_proto())
    return seqio.SentencePieceVocabulary(path)


@functools.lru_cache(maxsize=None)
def _load(kind: str, path: str, extra_ids: int) -> seqio.Vocabulary:
    if kind == "sentencepiece":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"task_vocabulary.spm_model: {path}: no such file")
        return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
    return gemma_vocabulary(path)


@gin.configurable
def task_vocabulary(kind: str = "sentencepiece", spm_model: Optional[str] = None,
                    gguf_path: Optional[str] = None, extra_ids: int = 0) -> seqio.Vocabulary:
    """The vocabulary every lmcor task tokenizes with (Gin-configured, see module doc)."""
    if kind == "sentencepiece":
        if not spm_model:
            raise ValueError("no task vocabulary configured: bind task_vocabulary.spm_model to a "
                             "SentencePiece model (train one with train_task_sentencepiece) or set "
                             "task_vocabulary.kind = 'gemma' with task_vocabulary.gguf_path")
        return _load(kind, os.path.abspath(spm_model), extra_ids)
    if kind == "gemma":
        if not gguf_path:
            raise ValueError("task_vocabulary.kind = 'gemma' needs task_vocabulary.gguf_path")
        return _load(kind, os.path.abspath(gguf_path), 0)
    raise ValueError(f"task_vocabulary.kind={kind!r}; expected 'sentencepiece' or 'gemma'")


def _delegated(name: str) -> property:
    return property(lambda self: getattr(self.resolved, name))


class DeferredVocabulary(seqio.Vocabulary):
    """Delegates to `task_vocabulary()` at use time, so Gin can choose after registration."""

    def __init__(self):
        super().__init__(extra_ids=0)

    @property
    def resolved(self) -> seqio.Vocabulary:
        return task_vocabulary()

    bos_id = _delegated("bos_id")
    eos_id = _delegated("eos_id")
    pad_id = _delegated("pad_id")
    unk_id = _delegated("unk_id")
    vocab_size = _delegated("vocab_size")
    _base_vocab_size = _delegated("_base_vocab_size")

    # The public methods delegate whole, so the resolved vocabulary's own EOS/unk handling runs.
    def encode(self, s):
        return self.resolved.encode(s)

    def decode(self, ids):
        return self.resolved.decode(ids)

    def encode_tf(self, s):
        return self.resolved.encode_tf(s)

    def decode_tf(self, ids):
        return self.resolved.decode_tf(ids)

    _encode, _decode, _encode_tf, _decode_tf = encode, decode, encode_tf, decode_tf


TASK_VOCAB = DeferredVocabulary()
