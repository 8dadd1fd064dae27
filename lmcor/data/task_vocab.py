"""A task vocabulary: the subset of a large vocabulary that a task's training data uses.

Gemma 3's tied embedding has 262,144 rows, and its LM head costs more per target token than the
whole 100M-parameter body. A corrector only ever needs the pieces its task's sources,
candidates and references are made of (a few thousand for E2E), so `gemma_model.vocab = "task"`
slices the embedding and the head to those rows. Ids are remapped at the model's edges: the
data and the tokenizer keep full-vocabulary ids, the model sees compact ids (`to_task`), and
decoded ids are mapped back (`to_full`) before detokenizing, so tasks, pools and metrics never
see the compact space. A corrector decodes only kept ids.

The kept ids are sorted, and the special ids (pad 0, EOS 1, BOS 2, unknown 3) are always kept,
so they keep their values in the compact space. An input id outside the set becomes the unknown
id; those are counted per split (`oov_report`), never dropped silently.

At inference a corrector widens the set with the pieces of the inputs it is given (`widened`),
taking their rows from the frozen base embedding: a name that the training data never held
("Blue Spice" among E2E's test MRs) can then be read and copied instead of becoming unknown.
"""
import hashlib
import json
import os
from typing import Dict, Iterable, Optional

import numpy as np

from lmcor.io_utils import atomic_write_text
from lmcor.paths import TASK_VOCAB

SPECIAL_IDS = (0, 1, 2, 3)  # pad, EOS, BOS, unknown in Gemma's SentencePiece model
UNK_ID = 3


class TaskVocab:
    def __init__(self, ids: Iterable[int], full_size: int):
        ids = np.unique(np.concatenate([np.asarray(list(ids), np.int64),
                                        np.asarray(SPECIAL_IDS, np.int64)]))
        if ids[0] < 0 or ids[-1] >= full_size:
            raise ValueError(f"task vocabulary: ids must lie in [0, {full_size}), got "
                             f"{ids[0]}..{ids[-1]}")
        self.ids = ids.astype(np.int32)
        self.full_size = int(full_size)
        self.table = np.full(self.full_size, UNK_ID, np.int32)
        self.table[self.ids] = np.arange(len(self.ids), dtype=np.int32)
        self.seen, self.oov = 0, 0

    @property
    def size(self) -> int:
        return len(self.ids)

    @classmethod
    def from_token_arrays(cls, arrays: Iterable[np.ndarray], full_size: int) -> "TaskVocab":
        used = np.zeros(full_size, bool)
        for a in arrays:
            used[np.asarray(a).ravel()] = True
        return cls(np.flatnonzero(used), full_size)

    def outside(self, ids) -> np.ndarray:
        """The distinct ids of `ids` that this vocabulary lacks (sorted)."""
        ids = np.unique(np.asarray(ids, np.int64).ravel())
        ids = ids[(ids >= 0) & (ids < self.full_size)]
        return ids[(self.table[ids] == UNK_ID) & (ids != UNK_ID)]

    def widened(self, extra_ids) -> "TaskVocab":
        """This vocabulary plus `extra_ids`; the kept ids stay sorted, so compact ids move."""
        return TaskVocab(np.concatenate([self.ids, np.asarray(extra_ids, np.int64).ravel()]),
                         self.full_size)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.ids.tobytes() + str(self.full_size).encode()).hexdigest()

    def to_task(self, ids, count: bool = True) -> np.ndarray:
        """Full ids -> compact ids; ids outside the set become the unknown id (and are
        counted, padding excluded)."""
        ids = np.asarray(ids)
        out = self.table[np.clip(ids, 0, self.full_size - 1)]
        if count:
            real = ids != 0
            self.seen += int(real.sum())
            self.oov += int((real & (out == UNK_ID) & (ids != UNK_ID)).sum())
        return out

    def to_full(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        return self.ids[np.clip(ids, 0, self.size - 1)]

    def oov_of(self, token_lists) -> Dict[str, float]:
        """The `oov_report` of these inputs alone (full ids), earlier counts dropped."""
        self.oov_report()
        self.to_task(np.concatenate([np.asarray(t).ravel() for t in token_lists]))
        return self.oov_report()

    def oov_report(self, reset: bool = True) -> Dict[str, float]:
        """{"tokens", "oov", "oov_rate"} since the last report."""
        out = {"tokens": self.seen, "oov": self.oov,
               "oov_rate": round(self.oov / max(self.seen, 1), 6)}
        if reset:
            self.seen, self.oov = 0, 0
        return out

    # ------------------------------------------------------------------ persistence

    def save(self, model_dir: str, base: Optional[dict] = None) -> str:
        path = os.path.join(model_dir, TASK_VOCAB)
        atomic_write_text(path, json.dumps({
            "full_size": self.full_size, "size": self.size, "sha256": self.fingerprint(),
            "base_weights": base, "ids": self.ids.tolist()}))
        return path

    @classmethod
    def load(cls, model_dir: str) -> "TaskVocab":
        path = os.path.join(model_dir, TASK_VOCAB)
        try:
            with open(path) as f:
                data = json.load(f)
            vocab = cls(data["ids"], data["full_size"])
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: not a task vocabulary ({e})") from e
        if vocab.fingerprint() != data.get("sha256"):
            raise ValueError(f"{path}: ids do not match their sha256 (edited or truncated)")
        return vocab

    @staticmethod
    def exists(model_dir: str) -> bool:
        return os.path.isfile(os.path.join(model_dir, TASK_VOCAB))
