"""WMT English->German (wmt21, wmt22, wmt23): every submitted system is a candidate.

Per year, `wmt2X_<variant>` has `train` and `test` splits over the whole set (to compose
mixtures). The held-out setup is `wmt_<variant>`: train on wmt21 + wmt22, validate on the first
half of wmt23 (segments 0..278) and test on the second half (279..556); the halves are
contiguous so a document rarely straddles them. Metrics: chrF and BLEU.

The held-out setup trains on paragraphs (`train_unit`, lmcor.data.paragraphs): consecutive
segments of one document joined until their source reaches a length drawn from the wmt23
validation half's paragraphs, every reference and system joined alike. Sentence-level rows
teach a corrector to stop after one sentence of a test paragraph.

Mixtures: `wmt_<variant>_mix` = wmt21 + wmt22 (rates by number of segments), and
`wmt22_per_system_lmcor_single_mix`, one single-candidate task per wmt22 system (the corrector
sees one generator's output at a time: the plug-and-play setting).
"""
import itertools
import os
import re
from typing import List, Optional, Sequence, Tuple

import gin

from lmcor import metrics
from lmcor.data import paragraphs
from lmcor.data.importers import import_wmt
from lmcor.paths import data_root
from lmcor.tasks import common

YEARS = ("wmt21", "wmt22", "wmt23")
TRAIN_YEARS = ("wmt21", "wmt22")
HELDOUT_YEAR = "wmt23"
METRIC_FNS = (metrics.seqio_chrf, metrics.seqio_bleu)


def year_records(year: str):
    return common.records_or_pool(year, "test", lambda: import_wmt(data_root(), year))


@gin.configurable
def heldout_generators(generators: Optional[Sequence[str]] = None) -> Optional[Tuple[str, ...]]:
    """The systems whose outputs the held-out setup's validation and test records keep, in
    this order (None: all of them). Validation then reads what the test reads."""
    return None if generators is None else tuple(generators)


def _keep(record: dict, generators: Optional[Tuple[str, ...]]) -> dict:
    if generators is None:
        return record
    by_name = {c["generator"]: c for c in record["candidates"]}
    missing = [g for g in generators if g not in by_name]
    if missing:
        raise ValueError(f"heldout_generators: {record['id']} has no output of {missing} "
                         f"(systems: {sorted(by_name)})")
    return dict(record, candidates=[by_name[g] for g in generators])


def _half(first: bool):
    records = list(year_records(HELDOUT_YEAR))
    cut = (len(records) + 1) // 2
    generators = heldout_generators()
    return iter(_keep(r, generators) for r in (records[:cut] if first else records[cut:]))


@gin.configurable
def train_unit(unit: str = "paragraph", seed: int = 0) -> tuple:
    """How the held-out setup's training records are cut: "paragraph" or "sentence"."""
    if unit not in ("paragraph", "sentence"):
        raise ValueError(f"train_unit.unit={unit!r}; choose 'paragraph' or 'sentence'")
    return unit, seed


def train_records():
    unit, seed = train_unit()
    if unit == "sentence":
        return itertools.chain.from_iterable(year_records(y) for y in TRAIN_YEARS)
    target = [paragraphs.words(r["source"]) for r in _half(True)]
    return itertools.chain.from_iterable(
        paragraphs.join_paragraphs(list(year_records(y)), target, seed=seed + k)
        for k, y in enumerate(TRAIN_YEARS))


def _year_source(year: str) -> common.PoolDataSource:
    records = lambda: year_records(year)  # noqa: E731
    return common.PoolDataSource({"train": records, "test": records})


def systems(year: str) -> List[str]:
    """Names of the systems submitted for `year` (empty when the data is not on this machine)."""
    folder = os.path.join(data_root(), "wmt_en_de", year, "systems")
    if not os.path.isdir(folder):
        return []
    return sorted(n[:-len(".de")] for n in os.listdir(folder) if n.endswith(".de"))


def register_per_system_mixture(year: str) -> str:
    """`{year}_per_system_lmcor_single_mix`: one single-candidate task per system."""
    source = _year_source(year)
    names = []
    for system in systems(year):
        slug = re.sub(r"[^a-z0-9]+", "_", system.lower()).strip("_")
        names += common.register_variants(f"{year}_{slug}", source, METRIC_FNS,
                                          generators=[system], variants=["lmcor_single"])
    mixture = f"{year}_per_system_lmcor_single_mix"
    if names:
        common.register_mixture(mixture, names)
    return mixture


for _year in YEARS:
    common.register_variants(_year, _year_source(_year), METRIC_FNS)

HELDOUT_SOURCE = common.PoolDataSource({"train": train_records,
                                        "validation": lambda: _half(True),
                                        "test": lambda: _half(False)})
TASKS = common.register_variants("wmt", HELDOUT_SOURCE, METRIC_FNS)
for _variant in common.VARIANTS:
    common.register_mixture(f"wmt_{_variant}_mix", [f"{y}_{_variant}" for y in TRAIN_YEARS])
register_per_system_mixture("wmt22")
