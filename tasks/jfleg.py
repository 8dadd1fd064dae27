"""JFLEG grammatical error correction (fluency edits), four references per sentence.

Only dev (754) and test (747) exist, so the dev set is split deterministically by source
sentence: ~10% to `validation`, the rest to `train`; `test` is the JFLEG test set.
Metric: GLEU (which also reads the source).
"""
from lmcor import metrics
from lmcor.data.importers import import_jfleg
from lmcor.paths import data_root
from lmcor.tasks import common

VALIDATION_PERCENT = 10
METRIC_FNS = (metrics.seqio_gleu,)


def _raw(split: str):
    return common.records_or_pool("jfleg", split, lambda: import_jfleg(data_root(), split))


def train_records():
    return (r for r in _raw("dev") if not common.in_holdout(r["source"], VALIDATION_PERCENT))


def validation_records():
    return (r for r in _raw("dev") if common.in_holdout(r["source"], VALIDATION_PERCENT))


def test_records():
    return _raw("test")


SOURCE = common.PoolDataSource({"train": train_records, "validation": validation_records,
                                "test": test_records})
TASKS = common.register_variants("jfleg", SOURCE, METRIC_FNS,
                                 postprocess_fn=common.source_and_references_postprocessor)
