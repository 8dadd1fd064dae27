"""The SeqIO metric functions a task declares (`metric_fns`), and the comparison-table metrics each
one stands for: a task's registration is the one place that says how its dataset is scored, in
training-time validation and in `lmcor evaluate` alike.
"""
from typing import Dict, List, Optional, Sequence, Tuple

from lmcor.metrics.bootstrap import bootstrap_ci
from lmcor.metrics.scores import bleu, chrf, gleu, rouge, ter

# SeqIO calls metric_fn(targets, predictions); a target may be one string or a list of
# references (evaluation keeps all references).


def _target_streams(targets: Sequence) -> List[List[Optional[str]]]:
    per_example = [[t] if isinstance(t, str) else list(t) for t in targets]
    width = max((len(r) for r in per_example), default=1)
    return [[r[k] if k < len(r) else None for r in per_example] for k in range(width)]


def seqio_bleu(targets, predictions) -> Dict[str, float]:
    return {"bleu": bleu(predictions, _target_streams(targets))}


def seqio_chrf(targets, predictions) -> Dict[str, float]:
    return {"chrf": chrf(predictions, _target_streams(targets))}


def seqio_ter(targets, predictions) -> Dict[str, float]:
    return {"ter": ter(predictions, _target_streams(targets))}


def seqio_rouge(targets, predictions) -> Dict[str, float]:
    return rouge(predictions, _target_streams(targets))


def seqio_interval(metric: str, targets, predictions, n_samples: int = 1000) -> Dict[str, float]:
    """{metric_low, metric_high}: the percentile bootstrap 95% interval of a SeqIO metric."""
    srcs = None
    if metric == "gleu":
        srcs = [t["source"] for t in targets]
        targets = [t["references"] for t in targets]
    ci = bootstrap_ci(metric, predictions, _target_streams(targets), srcs, n_samples=n_samples)
    return {f"{metric}_low": ci["low"], f"{metric}_high": ci["high"]}


def seqio_gleu(targets, predictions) -> Dict[str, float]:
    """Targets here are dicts {"source": str, "references": [str, ...]} (GLEU needs sources)."""
    srcs = [t["source"] for t in targets]
    return {"gleu": gleu(srcs, predictions, _target_streams([t["references"] for t in targets]))}


# What `lmcor evaluate` reports for each metric function a task declares. The table's ROUGE-L is
# over the whole output (rouge-score's rougeLsum, which equals rougeL on one-line outputs).
TABLE_METRICS = {seqio_bleu: ("bleu",), seqio_chrf: ("chrf",), seqio_ter: ("ter",),
                 seqio_rouge: ("rougeL",), seqio_gleu: ("gleu",)}


def table_metrics(metric_fns: Sequence) -> Tuple[str, ...]:
    """The comparison-table metrics of a task's SeqIO metric functions, in their order (the
    first is the table's main metric)."""
    names: List[str] = []
    for fn in metric_fns:
        if fn not in TABLE_METRICS:
            raise ValueError(f"metric function {getattr(fn, '__name__', fn)!r} has no comparison-"
                             "table metric (lmcor.metrics.seqio_fns.TABLE_METRICS)")
        names += [name for name in TABLE_METRICS[fn] if name not in names]
    return tuple(names)
