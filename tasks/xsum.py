"""XSum (extreme summarization): BBC article -> its one-sentence summary. Metrics: ROUGE, BLEU.

Not shipped here: point `xsum_data.path` at either
  * the original release: `XSum-TRAINING-DEV-TEST-SPLIT-90-5-5.json` (ids per split) next to
    `bbc-summary-data/<id>.summary` files ([SN]URL[SN] ... [SN]FIRST-SENTENCE[SN] (the summary)
    ... [SN]RESTBODY[SN] (the document)), or
  * `{train,validation,test}.jsonl` with one {"document", "summary", "id"} object per line;
or leave it unset to read TFDS `xsum` (from `xsum_data.tfds_data_dir`) when it is prepared.
The `lmcor` variants need candidates: bind `pool_overrides.by_dataset = {"xsum": {...}}`.
"""
import json
import os
from typing import Iterator, Optional

import gin

from lmcor import metrics
from lmcor.data.importers import DatasetError
from lmcor.tasks import common

SPLITS = ("train", "validation", "test")
SPLIT_FILE = "XSum-TRAINING-DEV-TEST-SPLIT-90-5-5.json"
METRIC_FNS = (metrics.seqio_rouge, metrics.seqio_bleu)
# Social-media boilerplate lines of the BBC pages, dropped as the reference loaders do.
_BOILERPLATE = {"Share this with", "Email", "Facebook", "Messenger", "Twitter", "Pinterest",
                "WhatsApp", "Linkedin", "LinkedIn", "Copy this link",
                "These are external links and will open in a new window"}
_SECTIONS = ("URL", "TITLE", "FIRST-SENTENCE", "RESTBODY")


@gin.configurable
def xsum_data(path: Optional[str] = None, tfds_data_dir: Optional[str] = None) -> dict:
    return {"path": path, "tfds_data_dir": tfds_data_dir}


def _record(doc_id: str, document: str, summary: str, split: str) -> dict:
    return {"id": f"xsum-{doc_id}", "source": document, "references": [summary],
            "candidates": [], "meta": {"dataset": "xsum", "split": split, "xsum_id": doc_id}}


def parse_summary_file(path: str) -> tuple:
    """(document, summary) from one original `.summary` file."""
    with open(path, encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip() and ln.strip() not in _BOILERPLATE]
    parts, current = {}, None
    for line in lines:
        if line.startswith("[SN]") and line.endswith("[SN]") and line[4:-4] in _SECTIONS:
            current = line[4:-4]
            parts[current] = []
        elif current is None:
            raise DatasetError(f"{path}:1: field '[SN]URL[SN]': text before the first section")
        else:
            parts[current].append(line)
    for section in ("FIRST-SENTENCE", "RESTBODY"):
        if section not in parts:
            raise DatasetError(f"{path}: field '[SN]{section}[SN]': section missing")
    return "\n".join(parts["RESTBODY"]), " ".join(parts["FIRST-SENTENCE"])


def _original(path: str, split: str) -> Iterator[dict]:
    split_file = os.path.join(path, SPLIT_FILE)
    with open(split_file, encoding="utf-8") as f:
        ids = json.load(f)
    if split not in ids:
        raise DatasetError(f"{split_file}: field {split!r}: no such split (has {sorted(ids)})")
    for doc_id in ids[split]:
        document, summary = parse_summary_file(
            os.path.join(path, "bbc-summary-data", f"{doc_id}.summary"))
        yield _record(str(doc_id), document, summary, split)


def _jsonl(path: str, split: str) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{lineno}: field '<json>': {e.msg}") from e
            for key in ("document", "summary", "id"):
                if not isinstance(row.get(key), str):
                    raise DatasetError(f"{path}:{lineno}: field {key!r}: missing or not a string")
            yield _record(row["id"], row["document"], row["summary"], split)


def _tfds(split: str, data_dir: Optional[str]) -> Iterator[dict]:
    import tensorflow_datasets as tfds

    try:  # download=False: read a prepared copy, never fetch (no internet on the clusters)
        ds = tfds.load("xsum", split=split, data_dir=data_dir, download=False)
    except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as e:
        raise DatasetError(f"xsum: xsum_data.path is not set and TFDS 'xsum' is not prepared "
                           f"in {data_dir or tfds.core.constants.DATA_DIR} ({e})") from e
    for i, ex in enumerate(tfds.as_numpy(ds)):
        doc_id = ex["id"].decode() if "id" in ex else str(i)
        yield _record(doc_id, ex["document"].decode(), ex["summary"].decode(), split)


def read_xsum(split: str, path: Optional[str] = None, tfds_data_dir: Optional[str] = None):
    """XSum records for `split` from a local copy (either format) or TFDS."""
    if path is None:
        return _tfds(split, tfds_data_dir)
    if os.path.isfile(os.path.join(path, SPLIT_FILE)):
        return _original(path, split)
    jsonl = os.path.join(path, f"{split}.jsonl")
    if os.path.isfile(jsonl):
        return _jsonl(jsonl, split)
    raise DatasetError(f"{path}: no {SPLIT_FILE} and no {split}.jsonl: not an XSum folder")


def _records(split: str):
    return lambda: common.records_or_pool("xsum", split, lambda: read_xsum(split, **xsum_data()))


SOURCE = common.PoolDataSource({s: _records(s) for s in SPLITS})
TASKS = common.register_variants("xsum", SOURCE, METRIC_FNS)
