"""Corpus metrics on a 0-100 scale: sacreBLEU BLEU/chrF/TER, ROUGE (rouge-score) and JFLEG GLEU,
and each one's per-segment sufficient statistics (what the bootstrap resamples).

All corpus metrics take `refs_list`: a list of reference *streams*, each aligned with `hyps`
(sacreBLEU's layout). A stream may hold None where a segment has fewer references.
"""
import random
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

RefStreams = Sequence[Sequence[Optional[str]]]
ROUGE_TYPES = ("rouge1", "rouge2", "rougeLsum")
GLEU_ORDER = 4
GLEU_ITERATIONS = 500


def _check_aligned(hyps: Sequence[str], refs_list: RefStreams, srcs=None) -> None:
    if not refs_list:
        raise ValueError("need at least one reference stream")
    for k, refs in enumerate(refs_list):
        if len(refs) != len(hyps):
            raise ValueError(f"reference stream {k} has {len(refs)} segments, hypotheses {len(hyps)}")
    if srcs is not None and len(srcs) != len(hyps):
        raise ValueError(f"sources have {len(srcs)} segments, hypotheses {len(hyps)}")


def _sacrebleu_metric(name: str, **kwargs):
    from sacrebleu.metrics import BLEU, CHRF, TER

    return {"bleu": BLEU, "chrf": CHRF, "ter": TER}[name](**kwargs)


def bleu_tokenizers() -> Tuple[str, ...]:
    """The names sacreBLEU's BLEU takes as `tokenize`."""
    from sacrebleu.metrics import BLEU

    return tuple(BLEU.TOKENIZERS)


def bleu(hyps: Sequence[str], refs_list: RefStreams, **kwargs) -> float:
    """Corpus sacreBLEU (13a tokenization by default); kwargs go to sacrebleu.metrics.BLEU."""
    _check_aligned(hyps, refs_list)
    return _sacrebleu_metric("bleu", **kwargs).corpus_score(list(hyps), refs_list).score


def chrf(hyps: Sequence[str], refs_list: RefStreams, **kwargs) -> float:
    """Corpus chrF (word_order=2 in kwargs gives chrF++)."""
    _check_aligned(hyps, refs_list)
    return _sacrebleu_metric("chrf", **kwargs).corpus_score(list(hyps), refs_list).score


def ter(hyps: Sequence[str], refs_list: RefStreams, **kwargs) -> float:
    """Corpus TER (lower is better)."""
    _check_aligned(hyps, refs_list)
    return _sacrebleu_metric("ter", **kwargs).corpus_score(list(hyps), refs_list).score


# ---------------------------------------------------------------- ROUGE


def _segment_refs(refs_list: RefStreams, i: int) -> List[str]:
    return [refs[i] for refs in refs_list if refs[i] is not None]


def _rouge_stats(hyps: Sequence[str], refs_list: RefStreams, use_stemmer: bool = True) -> np.ndarray:
    """Per-segment F1 for ROUGE_TYPES (best reference, as rouge-score's score_multi does)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    rows = []
    for i, hyp in enumerate(hyps):
        scores = scorer.score_multi(_segment_refs(refs_list, i), hyp)
        rows.append([scores[t].fmeasure * 100 for t in ROUGE_TYPES])
    return np.asarray(rows, dtype=np.float64).reshape(len(hyps), len(ROUGE_TYPES))


def rouge(hyps: Sequence[str], refs_list: RefStreams, use_stemmer: bool = True) -> Dict[str, float]:
    """Mean ROUGE-1/2/Lsum F1. rougeLsum treats '\\n' as the sentence separator, so pass
    summaries with one sentence per line."""
    _check_aligned(hyps, refs_list)
    stats = _rouge_stats(hyps, refs_list, use_stemmer)
    means = stats.mean(axis=0) if len(hyps) else np.zeros(len(ROUGE_TYPES))
    return {t: float(v) for t, v in zip(ROUGE_TYPES, means)}


# ---------------------------------------------------------------- GLEU (JFLEG)
# GLEU (Napoles et al. 2015, revised 2016 "GLEU without tuning", BP fix 2017): n-gram
# precision against the reference, minus n-grams the hypothesis shares with the source but the
# reference changed. With several references, each iteration draws one reference per sentence
# (seeded as the official compute_gleu does) and the corpus score is averaged over iterations.


def _ngrams(tokens: List[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) + 1 - n))


def _gleu_segment_stats(src: List[str], hyp: List[str], ref: List[str]) -> List[int]:
    """[hyp_len, ref_len, match_1, total_1, ..., match_4, total_4] for one sentence."""
    stats = [len(hyp), len(ref)]
    for n in range(1, GLEU_ORDER + 1):
        h, s, r = _ngrams(hyp, n), _ngrams(src, n), _ngrams(ref, n)
        # Source n-grams the reference dropped entirely: keeping them is penalised.
        s_not_r = Counter({g: c for g, c in s.items() if g not in r})
        matched = sum((h & r).values()) - sum((h & s_not_r).values())
        stats += [max(matched, 0), max(len(hyp) + 1 - n, 0)]
    return stats


def _gleu_from_totals(totals: np.ndarray) -> np.ndarray:
    """GLEU (0-1) from summed stats; works on [..., 2 + 2*order] arrays."""
    c, r = totals[..., 0], totals[..., 1]
    num, den = totals[..., 2::2], totals[..., 3::2]
    valid = np.all(totals != 0, axis=-1)  # the official scorer returns 0 if any stat is 0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_prec = np.log(num / den).sum(axis=-1) / GLEU_ORDER
        bp = np.minimum(0.0, 1.0 - r / c)
        score = np.exp(bp + log_prec)
    return np.where(valid, score, 0.0)


def _gleu_reference_choice(n_refs: int, n_segments: int, iterations: int) -> np.ndarray:
    # Same draws as the official script: iteration j seeds Python's RNG with j*101.
    choice = np.empty((iterations, n_segments), dtype=np.int64)
    for j in range(iterations):
        rng = random.Random(j * 101)
        choice[j] = [rng.randint(0, n_refs - 1) for _ in range(n_segments)]
    return choice


def _gleu_stats(srcs: Sequence[str], hyps: Sequence[str], refs_list: RefStreams,
                iterations: int = GLEU_ITERATIONS) -> np.ndarray:
    """[iterations, segments, 10] per-segment stats under each iteration's reference draw."""
    _check_aligned(hyps, refs_list, srcs)
    if any(ref is None for refs in refs_list for ref in refs):
        raise ValueError("GLEU needs the same number of references for every segment")
    n_refs, n = len(refs_list), len(hyps)
    per_ref = np.asarray([[_gleu_segment_stats(srcs[i].split(), hyps[i].split(), refs[i].split())
                           for i in range(n)] for refs in refs_list], dtype=np.float64)
    per_ref = per_ref.reshape(n_refs, n, 2 + 2 * GLEU_ORDER)
    iterations = 1 if n_refs == 1 else iterations
    choice = _gleu_reference_choice(n_refs, n, iterations)
    return per_ref[choice, np.arange(n)[None, :]]


def gleu(srcs: Sequence[str], hyps: Sequence[str], refs_list: RefStreams,
         iterations: int = GLEU_ITERATIONS) -> float:
    """JFLEG GLEU on whitespace tokens (the data is pre-tokenized), mean over iterations."""
    stats = _gleu_stats(srcs, hyps, refs_list, iterations)
    return float(_gleu_from_totals(stats.sum(axis=1)).mean() * 100)


# ---------------------------------------------------------------- per-segment statistics


def sufficient_stats(metric: str, hyps, refs_list, srcs,
                      tokenize: Optional[str] = None) -> Tuple[np.ndarray, Callable]:
    """Per-segment stats (segments on axis -2) and a function from weighted totals to score.

    `tokenize` (bleu only) must be the tokenizer the reported score used, or the resamples
    measure a different metric than the score they bracket."""
    if tokenize is not None and metric != "bleu":
        raise ValueError(f"tokenize applies to bleu only, not {metric}")
    if metric in ("bleu", "chrf", "ter"):
        _check_aligned(hyps, refs_list)
        m = _sacrebleu_metric(metric, **({"tokenize": tokenize} if tokenize else {}))
        stats = np.asarray(m._extract_corpus_statistics(list(hyps), refs_list), dtype=np.float64)

        def score(totals):
            return np.apply_along_axis(lambda t: m._compute_score_from_stats(list(t)).score, -1, totals)
        return stats, score
    if metric in ROUGE_TYPES:
        _check_aligned(hyps, refs_list)
        col = _rouge_stats(hyps, refs_list)[:, ROUGE_TYPES.index(metric)]
        stats = np.stack([col, np.ones_like(col)], axis=-1)
        return stats, lambda totals: totals[..., 0] / totals[..., 1]
    if metric == "gleu":
        if srcs is None:
            raise ValueError("GLEU needs the sources (srcs)")
        stats = _gleu_stats(srcs, hyps, refs_list)
        return stats, lambda totals: _gleu_from_totals(totals).mean(axis=-1) * 100
    raise ValueError(f"unknown metric {metric!r}; expected bleu, chrf, ter, gleu or {ROUGE_TYPES}")
