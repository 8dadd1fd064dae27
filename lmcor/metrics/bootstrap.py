"""Bootstrap resampling of a corpus metric: a percentile interval for one system, and the paired
test of one system against another (Koehn 2004, as sacreBLEU's paired_bs).

A resample reweights segments and recomputes the corpus score from their sufficient statistics
(lmcor.metrics.scores.sufficient_stats), so it costs a weighted sum, not a re-scoring.
"""
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from lmcor.metrics.scores import RefStreams, sufficient_stats


def _resample_weights(n_segments: int, n_samples: int, seed: int) -> np.ndarray:
    # Drawn like sacreBLEU's paired test (one index matrix), turned into per-segment counts.
    idx = np.random.default_rng(seed).choice(n_segments, size=(n_samples, n_segments), replace=True)
    return np.stack([np.bincount(row, minlength=n_segments) for row in idx]).astype(np.float64)


def _resampled_scores(stats: np.ndarray, score: Callable, weights: np.ndarray) -> np.ndarray:
    if stats.ndim == 2:
        return score(weights @ stats)
    totals = np.einsum("sn,ink->sik", weights, stats)  # GLEU: keep the iteration axis
    return score(totals)


def bootstrap_ci(metric: str, hyps: Sequence[str], refs_list: RefStreams, srcs=None,
                 n_samples: int = 1000, seed: int = 12345, confidence: float = 0.95,
                 tokenize: Optional[str] = None) -> Dict[str, float]:
    """Score and percentile bootstrap confidence interval for one system (`tokenize`: bleu's)."""
    stats, score = sufficient_stats(metric, hyps, refs_list, srcs, tokenize)
    actual = float(score(stats.sum(axis=-2)))
    samples = _resampled_scores(stats, score, _resample_weights(len(hyps), n_samples, seed))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return {"score": actual, "low": float(low), "high": float(high), "mean": float(samples.mean()),
            "n_samples": n_samples}


def paired_bootstrap(metric: str, hyps_a: Sequence[str], hyps_b: Sequence[str],
                     refs_list: RefStreams, srcs=None, n_samples: int = 1000, seed: int = 12345,
                     tokenize: Optional[str] = None) -> Dict[str, float]:
    """Paired bootstrap resampling (Koehn 2004) of system B against baseline A.

    p_value follows sacreBLEU's paired_bs: how often the centred resampled |A-B| difference
    exceeds the observed one. Both systems see the same resampled segments.
    """
    if len(hyps_a) != len(hyps_b):
        raise ValueError(f"systems have {len(hyps_a)} and {len(hyps_b)} segments")
    stats_a, score = sufficient_stats(metric, hyps_a, refs_list, srcs, tokenize)
    stats_b, _ = sufficient_stats(metric, hyps_b, refs_list, srcs, tokenize)
    a, b = float(score(stats_a.sum(axis=-2))), float(score(stats_b.sum(axis=-2)))
    weights = _resample_weights(len(hyps_a), n_samples, seed)
    sa, sb = _resampled_scores(stats_a, score, weights), _resampled_scores(stats_b, score, weights)
    diffs = np.abs(sb - sa)
    p = (np.sum(diffs - diffs.mean() > abs(b - a)) + 1) / (n_samples + 1)
    if not diffs.any():
        # Same score on every resample (e.g. a row identical to the baseline): sacreBLEU's
        # formula gives its smallest p here, but there is no difference to be significant.
        p = 1.0
    return {"a": a, "b": b, "delta": b - a, "p_value": float(p),
            "a_ci": [float(x) for x in np.percentile(sa, [2.5, 97.5])],
            "b_ci": [float(x) for x in np.percentile(sb, [2.5, 97.5])],
            "b_wins": float(np.mean(sb > sa)), "n_samples": n_samples}
