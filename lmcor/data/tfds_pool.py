"""TFDS builder for candidate pools: JSONL shards -> TFRecord splits, offline, from a manual dir.

The manual dir holds one sub-folder per split (its name is the split name), each with pool
shards (`*.jsonl`, `*.jsonl.gz`):

    manual/train/pool-00000.jsonl   manual/test/pool-00000.jsonl.gz ...

    prepare_pool(manual_dir, data_dir)                       # or by hand:
    LmcorPool(data_dir=data_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))

Then `lmcor.tasks.common.register_pool_task(name, tfds_data_dir=data_dir)` reads it through
`seqio.TfdsDataSource`. Examples keep the pool order (shuffling is off) and carry the same
features as the JSONL source (preprocessors.RAW_SIGNATURE): null prompt ids become "", null
logprobs NaN, and `meta` is a JSON string.
"""
import os
from typing import Dict, List

import numpy as np
import tensorflow_datasets as tfds

from lmcor.data.pool import is_shard, read_pool
from lmcor.data.pool_schema import PoolError
from lmcor.data.preprocessors import record_features

BUILDER_NAME = "lmcor_pool"
POOL_VERSION = "1.0.0"


def split_dirs(manual_dir: str) -> Dict[str, str]:
    """{split name: folder} for the manual dir's sub-folders that hold pool shards."""
    if not os.path.isdir(manual_dir):
        raise PoolError(f"{manual_dir}: manual dir not found")
    splits = {}
    for name in sorted(os.listdir(manual_dir)):
        folder = os.path.join(manual_dir, name)
        if os.path.isdir(folder) and any(is_shard(f) for f in os.listdir(folder)):
            if not name.isidentifier():
                raise PoolError(f"{folder}: split folder names must be identifiers (e.g. train)")
            splits[name] = folder
    if not splits:
        raise PoolError(f"{manual_dir}: no split sub-folder with pool shards "
                        "(expected e.g. train/pool-00000.jsonl)")
    return splits


class LmcorPool(tfds.core.GeneratorBasedBuilder):
    """A candidate pool (see docs/pool_format.md) as a TFDS dataset."""

    VERSION = tfds.core.Version(POOL_VERSION)
    RELEASE_NOTES = {POOL_VERSION: "Pool schema v1: id, source, references, candidates, meta."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put one sub-folder per split (train/, validation/, test/, "
                                    "...) with pool shards (*.jsonl or *.jsonl.gz) in the manual "
                                    "dir, e.g. as written by `lmcor sample`.")

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        candidate = {"text": text, "generator": text, "prompt_id": text, "decoding": text,
                     "temperature": tfds.features.Scalar(np.float32),
                     "logprob": tfds.features.Scalar(np.float32)}
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "id": text, "source": text, "meta": text,
                "references": tfds.features.Sequence(text),
                "candidates": tfds.features.Sequence(candidate)}),
            disable_shuffling=True,  # keep pool order: deterministic, and splits derived by order
            description="Candidate pool: source, references and LLM candidates per input.")

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {name: self._generate_examples(folder)
                for name, folder in split_dirs(os.fspath(dl_manager.manual_dir)).items()}

    def _generate_examples(self, folder: str):
        for rec in read_pool(folder):
            yield rec["id"], record_features(rec)


def prepare_pool(manual_dir: str, data_dir: str) -> List[str]:
    """Build the TFRecord splits under `data_dir` from the pool shards in `manual_dir`."""
    split_dirs(manual_dir)  # our error names the folder; TFDS's would only say "empty"
    builder = LmcorPool(data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return sorted(builder.info.splits.keys())
