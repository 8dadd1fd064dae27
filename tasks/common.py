"""What every lmcor task shares: pool data sources, the three variants, splits, postprocessing.

A dataset module gives, per task split, a function returning an iterator of pool records; this
module turns that into `<name>_finetune`, `<name>_lmcor` and `<name>_lmcor_single`. Training
splits yield one example per reference; other splits keep every reference (the `references`
feature, JSON) and the metric functions score against all of them.
"""
import functools
import hashlib
import itertools
from typing import Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from lmcor.data import preprocessors as pp
from lmcor.data.corrector_input import VARIANTS
from lmcor.data.pool import read_pool, resolve_pool_path
from lmcor.data.vocab import TASK_VOCAB

RecordsFn = Callable[[], Iterable[dict]]
TRAIN_SPLITS = ("train",)

OUTPUT_FEATURES = {
    "inputs": seqio.Feature(vocabulary=TASK_VOCAB, add_eos=True, required=False),
    "targets": seqio.Feature(vocabulary=TASK_VOCAB, add_eos=True),
}


@gin.configurable
def pool_overrides(by_dataset: Optional[Mapping[str, Mapping[str, object]]] = None) -> Mapping:
    """Pools that replace a raw split: folders written by `lmcor sample` or released files, e.g.
    `pool_overrides.by_dataset = {"e2e": {"dev": "/pools/e2e_dev", "test": "/pools/e2e_test"}}`.
    A list of pools for one split reads each in turn: every input once per pool, each time with
    that pool's candidates (a corrector trained on candidates from several prompts or LLMs)."""
    return by_dataset or {}


def records_or_pool(dataset: str, raw_split: str, importer: RecordsFn) -> Iterator[dict]:
    """The pool(s) configured for (dataset, raw split) if any, else the raw data's records."""
    pools = pool_overrides().get(dataset, {}).get(raw_split)
    if not pools:
        return iter(importer())
    if isinstance(pools, str):
        pools = [pools]
    return itertools.chain.from_iterable(read_pool(resolve_pool_path(p)) for p in pools)


def in_holdout(key: str, percent: int) -> bool:
    """Deterministic, order-free membership of `key` in a `percent`% held-out part."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 100 < percent


class _OneExamplePerTrainingReference:
    """Mixin for a seqio.DataSource: training splits are expanded to one example per reference
    here, because SeqIO preprocessors cannot see which split they run on."""

    train_splits: Sequence[str] = TRAIN_SPLITS

    def get_dataset(self, split: str = "train", *args, **kwargs) -> tf.data.Dataset:
        ds = super().get_dataset(split, *args, **kwargs)
        return pp.one_example_per_reference(ds) if split in self.train_splits else ds


class PoolDataSource(_OneExamplePerTrainingReference, seqio.FunctionDataSource):
    """Pool records from Python (JSONL pools, raw-data importers) as a SeqIO source."""

    def __init__(self, records_by_split: Mapping[str, RecordsFn],
                 train_splits: Sequence[str] = TRAIN_SPLITS):
        self._records_by_split = dict(records_by_split)
        self._counts: Dict[str, int] = {}
        self.train_splits = tuple(train_splits)
        super().__init__(dataset_fn=self._dataset, splits=list(self._records_by_split))

    def records(self, split: str) -> Iterator[dict]:
        """The split's pool records as Python dicts, in pool order, one per input with all its
        references (training splits are expanded per reference only in get_dataset)."""
        if split not in self._records_by_split:
            raise ValueError(f"split {split!r}: this source has {sorted(self._records_by_split)}")
        return iter(self._records_by_split[split]())

    def _dataset(self, split: str, shuffle_files: bool, seed: Optional[int] = None):
        del shuffle_files, seed  # records stream in pool order; seqio shuffles examples
        return tf.data.Dataset.from_generator(
            lambda: (pp.record_features(r) for r in self.records(split)),
            output_signature=pp.RAW_SIGNATURE)

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, **kwargs) -> tf.data.Dataset:
        """As FunctionDataSource, plus host sharding: every example goes to exactly one shard."""
        ds = super().get_dataset(split, shuffle, seed, None, **kwargs)
        if shard_info and shard_info.num_shards > 1:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        return ds

    def num_input_examples(self, split: str) -> int:
        """Records in the split (counted once, lazily: mixtures weight tasks by it)."""
        if split not in self._counts:
            self._counts[split] = sum(1 for _ in self.records(split))
        return self._counts[split]


class PoolTfdsDataSource(_OneExamplePerTrainingReference, seqio.TfdsDataSource):
    """A pool prepared by lmcor.data.tfds_pool, read through TFDS."""

    def __init__(self, tfds_data_dir: str, train_splits: Sequence[str] = TRAIN_SPLITS, **kwargs):
        from lmcor.data import tfds_pool  # registers the builder  # noqa: F401

        self.train_splits = tuple(train_splits)
        super().__init__(tfds_name=f"{tfds_pool.BUILDER_NAME}:{tfds_pool.POOL_VERSION}",
                         tfds_data_dir=tfds_data_dir, **kwargs)


def references_postprocessor(output, example=None, is_target=False):
    """Targets become all of the example's references; predictions stay text."""
    return pp.references_of(example) if is_target else output


def source_and_references_postprocessor(output, example=None, is_target=False):
    """For metrics that also read the source (GLEU): {"source", "references"}."""
    if not is_target:
        return output
    source = example["source"]
    return {"source": source.decode("utf-8") if isinstance(source, bytes) else source,
            "references": pp.references_of(example)}


def _add_task(name: str, source: seqio.DataSource, variant: str, metric_fns: Sequence,
              postprocess_fn: Callable, generators: Optional[Sequence[str]]) -> None:
    # A name registered twice raises (SeqIO's ValueError): a second task under one name would
    # silently keep the first one's data and metrics.
    seqio.TaskRegistry.add(
        name, source=source, output_features=OUTPUT_FEATURES,
        # Cache point first: the corrector input depends on Gin (k, order, budget) and on the
        # sequence length, so a cache holds records and every ablation reuses it.
        preprocessors=[seqio.CacheDatasetPlaceholder(),
                       functools.partial(pp.corrector_example, variant=variant,
                                         generators=generators),
                       seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        postprocess_fn=postprocess_fn, metric_fns=list(metric_fns))


def register_variants(name: str, source: seqio.DataSource, metric_fns: Sequence,
                      postprocess_fn: Callable = references_postprocessor,
                      generators: Optional[Sequence[str]] = None,
                      variants: Sequence[str] = VARIANTS) -> Sequence[str]:
    """Register `<name>_<variant>` for each variant over one data source; return the names. The
    task's `metric_fns` are its dataset's metrics everywhere: training-time validation and
    `lmcor evaluate`'s table (lmcor.metrics.table_metrics), main metric first."""
    names = []
    for variant in variants:
        names.append(f"{name}_{variant}")
        _add_task(names[-1], source, variant, metric_fns, postprocess_fn, generators)
    return names


def register_pool_task(name: str, pool_dir_by_split: Optional[Mapping[str, str]] = None, *,
                       tfds_data_dir: Optional[str] = None, metric_fns: Sequence = (),
                       postprocess_fn: Callable = references_postprocessor,
                       train_splits: Sequence[str] = TRAIN_SPLITS,
                       generators: Optional[Sequence[str]] = None) -> Sequence[str]:
    """Tasks over pools written by the sampling job: JSONL dirs per split, or a TFDS-prepared
    pool (`tfds_data_dir`, see lmcor.data.tfds_pool). `generators` keeps only their candidates."""
    if (pool_dir_by_split is None) == (tfds_data_dir is None):
        raise ValueError(f"register_pool_task({name!r}): give pool_dir_by_split or tfds_data_dir")
    if tfds_data_dir is not None:
        source = PoolTfdsDataSource(tfds_data_dir, train_splits=train_splits)
    else:
        source = PoolDataSource({split: functools.partial(read_pool, path)
                                 for split, path in pool_dir_by_split.items()}, train_splits)
    return register_variants(name, source, metric_fns, postprocess_fn, generators)


def register_mixture(name: str, task_names: Sequence[str]) -> None:
    """A mixture weighted by each task's number of training records; a name registered twice
    raises, as a task's does."""
    seqio.MixtureRegistry.add(name, list(task_names), default_rate=seqio.mixing_rate_num_examples)
