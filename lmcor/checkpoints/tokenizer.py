"""A SentencePiece tokenizer rebuilt from the vocabulary a GGUF file carries in its metadata.

A GGUF has no `tokenizer.model`; llama.cpp stores the pieces, their scores and their types under
`tokenizer.ggml.*`. We turn those back into a SentencePiece `ModelProto`, so the same bytes serve
our encoder and `seqio.SentencePieceVocabulary`, and the ids equal the transformers tokenizer that
reads the same file (checked in tests/test_tokenizer.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

_Piece = sp_pb2.ModelProto.SentencePiece

# llama.cpp's token types (gguf.TokenType) are SentencePiece's piece types with the same numbers.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_WHITESPACE_MARK = "\u2581"
_KEY = "tokenizer.ggml."


@dataclasses.dataclass(frozen=True)
class GgufVocab:
    """The tokenizer part of a GGUF's metadata, as llama.cpp wrote it."""

    tokens: Sequence[str]
    scores: Sequence[float]
    token_types: Sequence[int]
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int
    add_bos: bool = True
    model: str = "llama"
    # Gemma's merge order is the order of its pieces in the file, not its scores (transformers
    # rebuilds its merges the same way); whitespace runs then merge like any other piece.
    rank_by_position: bool = False

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], where: str = "<metadata>") -> "GgufVocab":
        missing = [k for k in ("model", "tokens", "scores", "token_type", "bos_token_id",
                               "eos_token_id", "unknown_token_id") if _KEY + k not in meta]
        if missing:
            raise ValueError(f"{where}: GGUF metadata lacks {', '.join(_KEY + k for k in missing)}")
        model = str(meta[_KEY + "model"])
        if model != "llama":
            raise ValueError(f"{where}: field {_KEY}model is {model!r}; only SentencePiece "
                             "vocabularies ('llama') can be rebuilt as a SentencePiece model")
        tokens = list(meta[_KEY + "tokens"])
        for field in ("scores", "token_type"):
            if len(meta[_KEY + field]) != len(tokens):
                raise ValueError(f"{where}: field {_KEY}{field} has {len(meta[_KEY + field])} "
                                 f"entries but {_KEY}tokens has {len(tokens)}")
        unk = int(meta[_KEY + "unknown_token_id"])
        return cls(tokens=tokens, scores=[float(s) for s in meta[_KEY + "scores"]],
                   token_types=[int(t) for t in meta[_KEY + "token_type"]],
                   bos_id=int(meta[_KEY + "bos_token_id"]), eos_id=int(meta[_KEY + "eos_token_id"]),
                   unk_id=unk, pad_id=int(meta.get(_KEY + "padding_token_id", unk)),
                   add_bos=bool(meta.get(_KEY + "add_bos_token", True)), model=model)


def _piece_type(vocab: GgufVocab, index: int, token: str) -> int:
    if vocab.rank_by_position and _piece_text(token) != token:
        return _NORMAL  # merged by rank as transformers does, not matched whole
    if index == vocab.unk_id:
        return _UNKNOWN  # SentencePiece insists on exactly one UNKNOWN piece; GGUFs often mark it CONTROL
    if index in (vocab.bos_id, vocab.eos_id, vocab.pad_id):
        return _CONTROL
    kind = vocab.token_types[index]
    if kind == _CONTROL:
        # transformers matches a control token such as <start_of_turn> whole wherever it appears
        # in the text; SentencePiece does that only for USER_DEFINED pieces.
        return _USER_DEFINED
    if kind not in (_NORMAL, _USER_DEFINED, _UNUSED, _BYTE):
        raise ValueError(f"token {index} ({token!r}) has unknown GGUF token type {kind}")
    return kind


def _piece_text(token: str) -> str:
    # llama.cpp writes Gemma's whitespace-run pieces with real spaces, but SentencePiece matches
    # pieces against text whose spaces are already escaped to U+2581.
    if token and not token.strip(" "):
        return _WHITESPACE_MARK * len(token)
    return token


def build_model_proto(vocab: GgufVocab) -> bytes:
    """Serialized SentencePiece BPE ModelProto equivalent to the GGUF vocabulary."""
    proto = sp_pb2.ModelProto()
    for index, token in enumerate(vocab.tokens):
        piece = proto.pieces.add()
        piece.piece = _piece_text(token)
        piece.type = _piece_type(vocab, index, token)
        piece.score = vocab.scores[index]
        if vocab.rank_by_position and piece.type in (_NORMAL, _USER_DEFINED):
            piece.score = -float(index)
    spec = proto.trainer_spec
    spec.model_type = sp_pb2.TrainerSpec.BPE
    spec.vocab_size = len(vocab.tokens)
    spec.byte_fallback = _BYTE in vocab.token_types
    spec.allow_whitespace_only_pieces = True
    spec.split_digits = True
    spec.unk_id, spec.bos_id, spec.eos_id = vocab.unk_id, vocab.bos_id, vocab.eos_id
    spec.pad_id = vocab.pad_id
    for name, idx in (("unk", vocab.unk_id), ("bos", vocab.bos_id), ("eos", vocab.eos_id),
                      ("pad", vocab.pad_id)):
        setattr(spec, f"{name}_piece", vocab.tokens[idx])
    norm = proto.normalizer_spec
    # Gemma's tokenizer does no Unicode normalization, no dummy prefix, and keeps whitespace runs.
    norm.name = "identity"
    norm.add_dummy_prefix = False
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return proto.SerializeToString()


class SentencePieceTokenizer:
    """Text <-> ids with a SentencePiece model given as serialized ModelProto bytes."""

    def __init__(self, model_proto: bytes, add_bos: bool = True):
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor()
        self._sp.LoadFromSerializedProto(self._proto)
        self.add_bos_default = add_bos  # what the model's own files ask for (llama.cpp's add_bos)

    @classmethod
    def from_gguf_vocab(cls, vocab: GgufVocab) -> "SentencePieceTokenizer":
        return cls(build_model_proto(vocab), add_bos=vocab.add_bos)

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def pad_id(self) -> int:
        return self._sp.pad_id()

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self._sp.EncodeAsIds(text)
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; bos/eos/pad are dropped, as generated text should not show them."""
        return self._sp.DecodeIds([int(i) for i in ids])

    def id_to_piece(self, index: int) -> str:
        return self._sp.IdToPiece(int(index))

    def sentencepiece_model_proto(self) -> bytes:
        return self._proto

    def __getstate__(self):
        return {"proto": self._proto, "add_bos": self.add_bos_default}

    def __setstate__(self, state):
        self.__init__(state["proto"], state["add_bos"])
