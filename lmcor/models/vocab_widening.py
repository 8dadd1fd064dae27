"""Widening a task-vocabulary Gemma decode adapter with the base model's rows for the pieces
of its inputs that the task vocabulary lacks (`widen_task_vocab`, `rewiden`)."""
import dataclasses

import jax
import numpy as np

from lmcor.models.gemma import GemmaLM


def widen_task_vocab(lm: GemmaLM, params, base_embedding, token_lists):
    """(decode adapter, params) whose task vocabulary also holds every piece of `token_lists`
    (full-vocabulary ids), with `base_embedding`'s rows (the whole-vocabulary table) for the
    added ones; (lm, params) unchanged when nothing is missing or no base table is at hand.

    A task-vocabulary corrector trains with its embedding frozen and its head tied, so an added
    row is exactly what the base model reads and scores for that piece: names and words outside
    the training data are copied instead of read as unknown. The vocabulary size is part of the
    decode loop's shape, so a new adapter compiles its own loops; callers that widen for the
    same inputs again (periodic validation) should keep the adapter (`rewiden`)."""
    task_map = lm.vocab_map
    cfg = lm.module.config
    if task_map is None or base_embedding is None or getattr(cfg, "quantize", None):
        return lm, params
    extra = task_map.outside(np.concatenate([np.asarray(t).ravel() for t in token_lists]))
    if not len(extra):
        return lm, params
    wide_map = task_map.widened(extra)
    wide = GemmaLM(dataclasses.replace(cfg, vocab_size=wide_map.size), vocab_map=wide_map)
    return wide, rewiden(lm, wide, params, base_embedding)


def rewiden(narrow: GemmaLM, wide: GemmaLM, params, base_embedding):
    """`params` (of `narrow`) with the embedding of `wide`'s vocabulary: the trained rows where
    `narrow` has them, `base_embedding`'s rows for the rest."""
    holder = params["params"] if "params" in params else params
    trained = np.asarray(holder["embedder"]["embedding"])
    table = np.array(np.asarray(base_embedding)[wide.vocab_map.ids], trained.dtype)
    table[wide.vocab_map.table[narrow.vocab_map.ids]] = trained
    holder = dict(holder, embedder=dict(holder["embedder"], embedding=jax.device_put(table)))
    return {"params": holder} if "params" in params else holder
