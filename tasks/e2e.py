"""E2E NLG (cleaned MRs): meaning representation -> restaurant description.

The cleaned training split is not shipped, so the dev set (1,484 distinct MRs) is split by
original MR, deterministically: ~10% of original MRs (and every cleaned MR derived from them)
go to `validation`, so no restaurant description leaks between the two. `test` is the cleaned
test set (1,847 MRs, 4,693 references). Metrics: BLEU, ROUGE, chrF.
"""
from lmcor import metrics
from lmcor.data.importers import import_e2e
from lmcor.paths import data_root
from lmcor.tasks import common

VALIDATION_PERCENT = 10
METRIC_FNS = (metrics.seqio_bleu, metrics.seqio_rouge, metrics.seqio_chrf)


def _raw(split: str):
    return common.records_or_pool("e2e", split, lambda: import_e2e(data_root(), split))


def _group_key(rec: dict) -> str:
    # Cleaned MRs derived from one original MR share references' wording: keep them together.
    return (rec["meta"].get("orig_mrs") or [rec["source"]])[0]


def train_records():
    return (r for r in _raw("dev") if not common.in_holdout(_group_key(r), VALIDATION_PERCENT))


def validation_records():
    return (r for r in _raw("dev") if common.in_holdout(_group_key(r), VALIDATION_PERCENT))


def test_records():
    return _raw("test")


SOURCE = common.PoolDataSource({"train": train_records, "validation": validation_records,
                                "test": test_records})
TASKS = common.register_variants("e2e", SOURCE, METRIC_FNS)
