"""E2E NLG (cleaned MRs): meaning representation -> restaurant description.

The cleaned training split is not shipped, so the dev set (1,484 distinct MRs) is split by
original MR, deterministically: ~10% of original MRs (and every cleaned MR derived from them)
go to `validation`, so no restaurant description leaks between the two. `test` is the cleaned
test set (1,847 MRs, 4,693 references). Metrics: BLEU, ROUGE, chrF.

`validation_swapped` is the hold-out with every name, eatType, food and near value swapped for
another of the training split's (lmcor.data.slot_values): the dev split holds nearly one food
and one eatType, the test set all of them, so a corrector that only writes the values it saw
scores well on `validation` and not on this. `value_swap.rate` (bound in lmcor.data.slot_values,
which a reload of this module leaves registered once) applies the same swap to training records
(augmentation).
"""
import functools
from typing import Dict, List, Sequence

from lmcor import metrics
from lmcor.data import slot_values
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


def _plain_train_records():
    return (r for r in _raw("dev") if not common.in_holdout(_group_key(r), VALIDATION_PERCENT))


@functools.lru_cache(maxsize=4)
def _train_values(pools_key: str, slots: Sequence[str]) -> Dict[str, List[str]]:
    del pools_key  # the cache key: the configured pools decide the records
    return slot_values.inventory(_plain_train_records(), slots)


def _swapped(records, rate: float, slots: Sequence[str], seed: str):
    values = _train_values(repr(common.pool_overrides().get("e2e")), tuple(slots))
    return (slot_values.swap_record(r, values, rate, seed) for r in records)


def train_records():
    rate, slots, seed = slot_values.value_swap()
    records = _plain_train_records()
    return _swapped(records, rate, slots, f"train:{seed}") if rate else records


def validation_records():
    return (r for r in _raw("dev") if common.in_holdout(_group_key(r), VALIDATION_PERCENT))


def validation_swapped_records():
    # Fixed, whatever training binds: every swappable value swapped, one draw per MR.
    return _swapped(validation_records(), 1.0, slot_values.SWAP_SLOTS, "validation")


def test_records():
    return _raw("test")


SOURCE = common.PoolDataSource({"train": train_records, "validation": validation_records,
                                "validation_swapped": validation_swapped_records,
                                "test": test_records})
TASKS = common.register_variants("e2e", SOURCE, METRIC_FNS)
