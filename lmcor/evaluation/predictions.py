"""EVAL_DIR/predictions/: one text file per table row, and the inputs they are scored against.

`lmcor score` re-scores any row from these files (`source.txt`, `ref.K.txt`, `references.jsonl`).
A corrector row is saved with a key (`<row>.key.json`) naming what it was decoded from, and a
rerun of `lmcor evaluate` reuses it only when the key still matches (`cached_predictions`).
While a row decodes, each finished batch is saved (`<row>.partial.json`, its outputs so far
and their key with the batch size), so a killed evaluation loses at most the batch in flight.
"""
import hashlib
import json
import os
from typing import List, Mapping, Optional, Sequence

from absl import logging

from lmcor.io_utils import atomic_write_text, read_lines


def prediction_path(pred_dir: str, row: str) -> str:
    """predictions/<row>.txt; 'best single system (X)' is stored as best_single_system.txt."""
    slug = "".join(ch if ch.isalnum() else "_" for ch in row.split(" (")[0].lower()).strip("_")
    return os.path.join(pred_dir, f"{slug}.txt")


# Raised when the same weights and settings decode to other outputs (2: a task-vocabulary
# corrector reads its inputs' pieces from the base embedding), so saved rows are decoded again.
DECODING_REVISION = 2


def prediction_key(records: Sequence[Mapping], model_dir: str, corrector_bindings: Sequence[str],
                   num_candidates: Optional[int]) -> dict:
    """What a saved corrector row was decoded from: the inputs (ids, sources, candidates), the
    MODEL_DIR, the weights it restores, and the settings that change decoding (the evaluation's
    corrector_bindings and num_candidates). Another pool, test slice, corrector or checkpoint (a
    run trained further, a better validated step) in the same EVAL_DIR must not reuse it."""
    from lmcor.inference.run_dir import trained_identity  # noqa: PLC0415 — loads orbax
    digest = hashlib.sha256()
    for rec in records:
        digest.update(json.dumps([rec["id"], rec["source"], rec.get("candidates")],
                                 sort_keys=True, ensure_ascii=False).encode())
    return {"inputs_sha256": digest.hexdigest(), "model_dir": os.path.abspath(model_dir),
            "weights": trained_identity(model_dir),
            "corrector_bindings": list(corrector_bindings),
            "num_candidates": num_candidates, "decoding": DECODING_REVISION}


def _key_path(path: str) -> str:
    return path[:-len(".txt")] + ".key.json"


def cached_predictions(path: str, key: dict, n: int) -> Optional[List[str]]:
    """The `n` lines saved at `path` if they were decoded from `key`, else None (logged why)."""
    if not os.path.isfile(path):
        return None
    lines = read_lines(path)
    if len(lines) != n:
        logging.warning("%s: %d lines, expected %d; decoding again", path, len(lines), n)
        return None
    if not os.path.isfile(_key_path(path)):
        # Written before keys existed: trusted by its length alone, as then.
        logging.warning("%s: no %s; reused by its line count", path, _key_path(path))
        return lines
    with open(_key_path(path), encoding="utf-8") as f:
        saved = json.load(f)
    if saved != key:
        changed = sorted(k for k in key if saved.get(k) != key[k])
        logging.warning("%s: decoded with other %s; decoding again", path, changed)
        return None
    return lines


def save_predictions(path: str, lines: Sequence[str], key: dict) -> None:
    """A corrector row's lines and the key of what they were decoded from; its saved batches
    are dropped."""
    # Predictions before their key: a kill in between leaves a key-less or old-key file, never
    # a new key vouching for old lines.
    write_lines(path, lines)
    atomic_write_text(_key_path(path), json.dumps(key, indent=1) + "\n")
    drop_batches(path)


def _partial_path(path: str) -> str:
    return path[:-len(".txt")] + ".partial.json"


def saved_batches(path: str, key: dict) -> List[str]:
    """The outputs of the batches an interrupted decode of the row at `path` saved under `key`
    (`save_batches`); [] when there are none, or they were decoded from anything else."""
    partial = _partial_path(path)
    if not os.path.isfile(partial):
        return []
    with open(partial, encoding="utf-8") as f:
        try:
            saved = json.load(f)
        except json.JSONDecodeError as e:  # written atomically: only a hand could break it
            logging.warning("%s: not valid JSON (%s); starting that row over", partial, e.msg)
            return []
    if saved.get("key") != key:
        changed = sorted(k for k in key if saved.get("key", {}).get(k) != key[k])
        logging.warning("%s: decoded with other %s; starting that row over", partial, changed)
        return []
    return list(saved["outputs"])


def save_batches(path: str, key: dict, outputs: Sequence[str]) -> None:
    """The outputs decoded so far for the row at `path`, replacing those saved before."""
    atomic_write_text(_partial_path(path), json.dumps({"key": key, "outputs": list(outputs)},
                                                      ensure_ascii=False) + "\n")


def drop_batches(path: str) -> None:
    if os.path.exists(_partial_path(path)):
        os.unlink(_partial_path(path))


def write_lines(path: str, lines: Sequence[str]) -> None:
    # One segment per line: newlines inside an output would shift every later segment.
    atomic_write_text(path, "".join(x.replace("\n", " ") + "\n" for x in lines))


def write_inputs(pred_dir: str, records: Sequence[Mapping], refs: List[List]) -> None:
    write_lines(os.path.join(pred_dir, "source.txt"), [r["source"] for r in records])
    for k, stream in enumerate(refs):
        if all(x is not None for x in stream):  # `lmcor score` needs complete streams
            write_lines(os.path.join(pred_dir, f"ref.{k}.txt"), stream)
    atomic_write_text(os.path.join(pred_dir, "references.jsonl"),
                      "".join(json.dumps(r["references"], ensure_ascii=False) + "\n"
                              for r in records))
