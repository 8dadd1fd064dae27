"""Training data from SeqIO tasks/mixtures: this host's data shards, run through the model's
feature converter (packing on by default) and held in memory as fixed-shape numpy arrays, which
`training.batches.BatchSource` turns into step-keyed batches (exact resume, no iterator state).

Also `task_spm_model`, so a Gin file can bind a task vocabulary trained on the task's own text:
`task_vocabulary.spm_model = @task_spm_model()`.

Gin files import this module (it is the training data factory), so it imports SeqIO, the tasks
and the feature converters at its top: their configurables are then registered while the Gin
files are parsed, before the config is locked.
"""
import itertools
import logging
import os
from typing import Dict, Mapping, Optional, Sequence

import gin
import numpy as np
import seqio
from tqdm import tqdm

import lmcor.tasks  # noqa: F401  (registers the tasks and mixtures)
from lmcor.data import importers, vocab
from lmcor.data.feature_converters import DecoderOnlyFeatureConverter
from lmcor.data.pool import read_pool
from lmcor.io_utils import file_state
from lmcor.paths import data_root
from lmcor.training import grouped_rows

log = logging.getLogger(__name__)


def feature_converter(kind: str, pack: bool, bos_id: int = 2):
    if kind == "encdec":
        return seqio.EncDecFeatureConverter(pack=pack)
    if kind == "decoder":
        return DecoderOnlyFeatureConverter(pack=pack, bos_id=bos_id)
    raise ValueError(f"model kind {kind!r}: expected 'encdec' or 'decoder'")


def _to_arrays(ds, limit: Optional[int], desc: str) -> Dict[str, np.ndarray]:
    rows = []
    for ex in tqdm(ds.as_numpy_iterator(), desc=desc, unit="ex", leave=False):
        rows.append(ex)
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise ValueError(f"{desc}: the dataset is empty")
    return {k: np.stack([r[k] for r in rows]).astype(np.int32 if k != "decoder_loss_weights"
                                                       else np.float32) for k in rows[0]}


@gin.configurable(denylist=["num_shards", "owned_shards"])
def seqio_train_data(num_shards: int, owned_shards: Sequence[int], task: str = gin.REQUIRED,
                     feature_lengths: Mapping[str, int] = gin.REQUIRED, split: str = "train",
                     kind: str = "encdec", pack: bool = True, bos_id: int = 2,
                     max_examples: Optional[int] = None,
                     share_inputs: bool = False) -> Dict[int, Dict[str, np.ndarray]]:
    """{shard: features} for the owned shards of `task`'s split (one pass, in source order; the
    BatchSource reshuffles every epoch). `max_examples` caps each shard's converted rows.

    `share_inputs` (decoder-only): one row per input holding all of its references
    (lmcor.training.grouped_rows) instead of packed rows; `pack` then does not apply. Rows are
    padded to the sum of the feature lengths; `train.length_buckets` cuts each batch to its
    longest row. Shard s holds inputs s, s+S, ..., so an input's references stay together."""
    if share_inputs:
        if kind != "decoder":
            raise ValueError("seqio_train_data.share_inputs needs kind = 'decoder'")
        return _grouped_shards(task, feature_lengths, split, bos_id, max_examples,
                               num_shards, owned_shards)
    converter = feature_converter(kind, pack, bos_id)
    out = {}
    for shard in owned_shards:
        ds = seqio.get_dataset(task, dict(feature_lengths), converter, dataset_split=split,
                               shuffle=False, num_epochs=1, use_cached=False,
                               shard_info=seqio.ShardInfo(shard, num_shards))
        out[shard] = _to_arrays(ds, max_examples, f"{task}:{split} shard {shard}")
        log.info("%s:%s shard %d/%d: %d rows (%s)", task, split, shard, num_shards,
                     len(next(iter(out[shard].values()))), "packed" if pack else "padded")
    return out


def _grouped_shards(task, feature_lengths, split, bos_id, max_examples, num_shards,
                    owned_shards):
    ds = seqio.get_mixture_or_task(task).get_dataset(
        dict(feature_lengths), split=split, shuffle=False, num_epochs=1, use_cached=False)
    examples = ((ex["inputs"], ex["targets"]) for ex in tqdm(
        ds.as_numpy_iterator(), desc=f"{task}:{split}", unit="ex", leave=False))
    groups = grouped_rows.group_examples(itertools.islice(examples, max_examples))
    if not groups:
        raise ValueError(f"{task}:{split}: the dataset is empty")
    length = sum(feature_lengths.values())
    out = {s: grouped_rows.grouped_rows(groups[s::num_shards], length, bos_id)
           for s in owned_shards}
    for s, arrays in out.items():
        log.info("%s:%s shard %d/%d: %d rows sharing their inputs among %d references",
                 task, split, s, num_shards, len(arrays["decoder_segment_ids"]),
                 int(sum(len(t) for _, t in groups[s::num_shards])))
    return out


def _dataset_records(dataset: str):
    if os.path.exists(dataset):
        return read_pool(dataset)
    if dataset in ("wmt21", "wmt22", "wmt23"):
        return importers.import_wmt(data_root(), dataset)
    if dataset == "e2e":
        return importers.import_e2e(data_root(), "dev")
    if dataset == "jfleg":
        return importers.import_jfleg(data_root(), "dev")
    raise ValueError(f"task_spm_model.datasets: {dataset!r} is not a pool directory nor one of "
                     "wmt21, wmt22, wmt23, e2e, jfleg")


@gin.configurable
def task_spm_model(datasets: Sequence[str] = gin.REQUIRED, vocab_size: int = 8000,
                   out_dir: Optional[str] = None, max_records: Optional[int] = None) -> str:
    """Path of a SentencePiece model trained on the datasets' sources, references and candidates
    (cached: retrained only when the text or settings change). `max_records` caps the records
    read from each dataset (smoke runs).

    Checked once per process while the model file stays as it was: Gin calls this on every use
    of the task vocabulary (each encode and decode), and checking means reading and hashing every
    text of the datasets. A dataset changed on disk is seen by the next process."""
    name = "-".join(os.path.basename(os.path.normpath(d)) for d in datasets)
    cap = f"-first{max_records}" if max_records else ""
    path = os.path.join(out_dir or os.path.join(vocab.cache_dir(), "spm"),
                        f"{name}-{vocab_size}{cap}.model")
    key = (tuple(datasets), path)
    if key in _CHECKED and _CHECKED[key] == file_state(path):
        return path
    records = itertools.chain.from_iterable(
        itertools.islice(_dataset_records(d), max_records) for d in datasets)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    vocab.train_task_sentencepiece(vocab.pool_texts(records), vocab_size, path)
    _CHECKED[key] = file_state(path)
    return path


# (datasets, model path) -> the model file's (inode, mtime, size) when it was last checked. Two
# dataset lists can share a path (same folder names); then the file changes and is checked again.
_CHECKED: Dict[tuple, tuple] = {}

