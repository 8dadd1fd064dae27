"""The paper's comparison table for one task's test pool, behind `lmcor evaluate`.

    lmcor evaluate --gin_file=gin/runs/evaluate.gin --gin_file=gin/tasks/e2e.gin \
        --gin.EVAL_DIR=/runs/e2e/eval --gin.FINETUNE_DIR=/runs/e2e/finetune \
        --gin.LMCOR_SINGLE_DIR=/runs/e2e/single --gin.LMCOR_DIR=/runs/e2e/lmcor

Rows: LLM greedy, LLM sample, best single system (pools with several generators), MBR rerank,
oracle, fine-tuned, LMCor single, LMCor. A row whose MODEL_DIR is unset or missing is omitted
with a note (printed, and kept in results.json's "notes"). Every metric carries a percentile
bootstrap 95% interval and a paired bootstrap test against LLM greedy (lmcor.metrics).
A record whose pool holds no candidates gets an empty output in the pool rows and is corrected
from its source alone; such records are counted in a note.

Everything the evaluation reads is checked before it writes anything (`check_inputs`): EVAL_DIR
writable, the pool or task readable, each corrector folder complete. A mistake is one line
naming the file, line and field or the binding, with exit status 2.

EVAL_DIR receives `results.json`, `results.md` (lmcor.evaluation.results_table) and `predictions/` (one text
file per row, plus the sources and any complete reference streams; lmcor.evaluation.predictions) so
`lmcor score` can re-score every number. Predictions already on disk are reused: a rerun decodes
only the rows that are missing or were decoded from other inputs, weights or settings, and a
row's decode resumes after the last batch an interrupted run saved.
"""
import dataclasses
import json
import os
import sys
import time
from typing import Dict, List, Mapping, Optional, Sequence

import gin
from absl import logging

from lmcor.data.corrector_input import ROW_NAMES
from lmcor import metrics
from lmcor.evaluation import breakdowns, rerank, slot_mentions
from lmcor.evaluation.inputs import (CORRECTOR_ROWS, Inputs, check_inputs, corrector_bindings,
                                     task_dataset, task_metrics)
from lmcor.io_utils import atomic_write_text
from lmcor.paths import code_version
from lmcor.evaluation.predictions import (cached_predictions, drop_batches, prediction_key,
                                          prediction_path, save_batches, save_predictions,
                                          saved_batches, write_inputs, write_lines)
from lmcor.evaluation.results_table import GREEDY_ROW, METRIC_LABELS, markdown_table

# The table's ROUGE-L is rouge-score's rougeLsum (lmcor.metrics.seqio_fns.TABLE_METRICS).
_BOOTSTRAP_NAME = {"rougeL": "rougeLsum"}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    task: str
    dataset: str
    out_dir: str
    split: str = "test"
    pool: Optional[str] = None
    model_dirs: Mapping[str, Optional[str]] = dataclasses.field(default_factory=dict)
    greedy_generator: Optional[str] = None
    mbr_utility: str = "chrf"
    metric_names: Sequence[str] = ()
    max_references: Optional[int] = None
    max_examples: Optional[int] = None
    bootstrap_samples: int = 1000
    seed: int = 0
    batch_size: int = 16
    corrector_bindings: Sequence[str] = ()
    num_candidates: Optional[int] = None
    tags: Mapping[str, object] = dataclasses.field(default_factory=dict)
    breakdown: Optional[str] = None
    plant_reference: bool = False


@gin.configurable
def evaluation(task: str = gin.REQUIRED, out_dir: str = gin.REQUIRED, split: str = "test",
               pool: Optional[str] = None, finetune_dir: Optional[str] = None,
               lmcor_single_dir: Optional[str] = None, lmcor_dir: Optional[str] = None,
               greedy_generator: Optional[str] = None, mbr_utility: str = "chrf",
               metric_names: Optional[Sequence[str]] = None,
               max_references: Optional[int] = None, max_examples: Optional[int] = None,
               bootstrap_samples: int = 1000, seed: int = 0, batch_size: int = 16,
               corrector_bindings: Sequence[str] = (), num_candidates: Optional[int] = None,
               tags: Optional[Mapping[str, object]] = None,
               breakdown: Optional[str] = "auto", plant_reference: bool = False) -> EvalConfig:
    """Gin entry point (gin/runs/evaluate.gin binds it from the task file's macros). `task` is
    a registered task or mixture (any variant: the pool is the same) or, with `pool`, a dataset
    name (e.g. "wmt22", whose `<name>_lmcor` task is registered). The table's metrics are the
    ones that task declares (`task_metrics`), unless `metric_names` gives others.
    `num_candidates` keeps each pool's first k candidates (for every row; the correctors get
    corrector_options.k = k); `tags` (e.g. {"ablation": "num_candidates", "value": 3}) are
    copied into results.json for `lmcor report`'s ablation plots. `breakdown` names a grouping
    of the test inputs (lmcor.evaluation.breakdowns) to score the main metric on per group; "auto" takes
    the dataset's (E2E: by number of attributes), None none. `plant_reference` runs the
    keep-a-good-candidate probe (`inputs.planted`): each input's first reference replaces the
    greedy candidate and leaves the references."""
    dataset = task_dataset(task)
    names = tuple(metric_names or task_metrics(task))
    unknown = [m for m in names if m not in METRIC_LABELS]
    if unknown:
        raise ValueError(f"evaluation.metric_names: unknown {unknown}; known {sorted(METRIC_LABELS)}")
    if mbr_utility not in rerank.UTILITIES:
        raise ValueError(f"evaluation.mbr_utility={mbr_utility!r}; expected one of {rerank.UTILITIES}")
    dirs = {ROW_NAMES[variant]: folder for variant, folder in (
        ("finetune", finetune_dir), ("lmcor_single", lmcor_single_dir), ("lmcor", lmcor_dir))}
    if breakdown == "auto":
        breakdown = breakdowns.DEFAULT_BY_DATASET.get(dataset)
    if breakdown is not None and breakdown not in breakdowns.BREAKDOWNS:
        raise ValueError(f"evaluation.breakdown={breakdown!r}; expected 'auto', None or one of "
                         f"{sorted(breakdowns.BREAKDOWNS)}")
    return EvalConfig(task, dataset, out_dir, split, pool, dirs, greedy_generator, mbr_utility, names,
                      max_references, max_examples, bootstrap_samples, seed, batch_size,
                      tuple(corrector_bindings), num_candidates, dict(tags or {}), breakdown,
                      plant_reference)


# ---------------------------------------------------------------------- scoring


def score_row(hyps: Sequence[str], baseline: Sequence[str], refs: List[List], srcs: Sequence[str],
              names: Sequence[str], n_samples: int, seed: int) -> Dict[str, dict]:
    """Per metric: score, bootstrap 95% interval and the paired test against `baseline`."""
    out = {}
    for name in names:
        metric = _BOOTSTRAP_NAME.get(name, name)
        ci = metrics.bootstrap_ci(metric, hyps, refs, srcs, n_samples=n_samples, seed=seed)
        test = metrics.paired_bootstrap(metric, baseline, hyps, refs, srcs, n_samples=n_samples,
                                        seed=seed)
        out[name] = {"score": ci["score"], "low": ci["low"], "high": ci["high"],
                     "delta": test["delta"], "p_value": test["p_value"]}
    return out


def baseline_rows(records: Sequence[Mapping], cfg: EvalConfig,
                  refs: List[List]) -> Dict[str, List[str]]:
    """The rows that need no trained model, in table order."""
    rows = {GREEDY_ROW: rerank.greedy_outputs(records, cfg.greedy_generator),
            "LLM sample": rerank.random_outputs(records, cfg.seed)}
    systems = rerank.generator_outputs(records)
    if len(systems) > 1:
        main = _BOOTSTRAP_NAME.get(cfg.metric_names[0], cfg.metric_names[0])
        srcs = [r["source"] for r in records]
        best = max(systems, key=lambda s: _corpus(main, systems[s], refs, srcs))
        logging.info("best single system by %s: %s", main, best)
        rows[f"best single system ({best})"] = systems[best]
    rows["MBR rerank"] = rerank.mbr_outputs(records, cfg.mbr_utility)
    rows["oracle"] = rerank.oracle_outputs(records, cfg.mbr_utility, cfg.max_references)
    return rows


def output_length(hyps: Sequence[str], refs: List[List]) -> dict:
    """Mean words per output, and all outputs' words over the first references' (over the
    records that have one): a corrector that stops early or runs on shows it here."""
    pairs = [(h, r) for h, r in zip(hyps, refs[0]) if r is not None]
    ref_words = sum(len(r.split()) for _, r in pairs)
    out_words = sum(len(h.split()) for h, _ in pairs)
    return {"words": round(sum(len(h.split()) for h in hyps) / max(len(hyps), 1), 2),
            "vs_reference": round(out_words / ref_words, 4) if ref_words else None}


def _corpus(metric: str, hyps, refs, srcs) -> float:
    if metric == "gleu":
        return metrics.gleu(srcs, hyps, refs)
    if metric in metrics.ROUGE_TYPES:
        return metrics.rouge(hyps, refs)[metric]
    return getattr(metrics, metric)(hyps, refs)


def corrector_outputs(records: Sequence[Mapping], variant: str, model_dir: str,
                      cfg: EvalConfig, done: Sequence[str] = (), on_batch=None) -> List[str]:
    """Decodes with the trained corrector in model_dir (lmcor.inference: the one inference
    path), after the `done` outputs of an interrupted decode, calling `on_batch(outputs so far)`
    after each batch. Its run config replaces the current Gin config, which evaluate() has
    already read."""
    from lmcor.inference.corrector import Corrector

    gin.clear_config()
    corrector = Corrector.from_model_dir(model_dir, gin_bindings=corrector_bindings(variant, cfg))
    return corrector.correct(records, batch_size=cfg.batch_size, progress=True, done=done,
                             on_batch=on_batch)


def _breakdown(records, outputs, refs, srcs, cfg: "EvalConfig") -> Optional[dict]:
    if cfg.breakdown is None:
        return None
    main = _BOOTSTRAP_NAME.get(cfg.metric_names[0], cfg.metric_names[0])

    def score(idx, hyps):
        return _corpus(main, [hyps[i] for i in idx], [[s[i] for i in idx] for s in refs],
                       [srcs[i] for i in idx])

    return breakdowns.score_groups(cfg.breakdown, records, outputs, score)


# Paired tests between trained rows: does LMCor's pool beat the same model on the source alone?
COMPARISONS = ((ROW_NAMES["lmcor"], ROW_NAMES["finetune"]),)


def comparisons(outputs: Mapping[str, Sequence[str]], refs, srcs,
                cfg: "EvalConfig") -> List[dict]:
    """The COMPARISONS whose two rows are both in the table: main metric, Δ and paired p."""
    out = []
    main = cfg.metric_names[0]
    for row, against in COMPARISONS:
        if row in outputs and against in outputs:
            test = metrics.paired_bootstrap(_BOOTSTRAP_NAME.get(main, main), outputs[against],
                                            outputs[row], refs, srcs,
                                            n_samples=cfg.bootstrap_samples, seed=cfg.seed)
            out.append({"row": row, "against": against, "metric": main,
                        "delta": test["delta"], "p_value": test["p_value"]})
    return out


# ---------------------------------------------------------------------- the job


_NOT_DECODED = {"decode_seconds": None, "decoded_batches": None, "resumed_batches": None}


def _row_outputs(inputs: Inputs, cfg: EvalConfig, pred_dir: str):
    """(row name, outputs, decoding) in table order. A corrector row whose predictions are
    already saved is not decoded again; one whose decode was interrupted resumes after its
    last saved batch. `decoding`: the seconds and batches decoded by this run, the batches
    taken from the interrupted one."""
    for row, outs in baseline_rows(inputs.records, cfg, inputs.refs).items():
        yield row, outs, _NOT_DECODED
    for name, variant, model_dir in inputs.correctors:
        path = prediction_path(pred_dir, name)
        key = prediction_key(inputs.records, model_dir, cfg.corrector_bindings,
                             cfg.num_candidates)
        outs = cached_predictions(path, key, len(inputs.records))
        if outs is not None:
            drop_batches(path)  # left by a kill between the row's last two writes
            yield name, outs, dict(_NOT_DECODED, decoded_batches=0, resumed_batches=0)
            continue
        # The batch size changes how inputs are padded together, so it keys the batches too.
        batch_key = dict(key, batch_size=cfg.batch_size)
        done, decoded = saved_batches(path, batch_key), []

        def flush(outputs: List[str]) -> None:
            save_batches(path, batch_key, outputs)
            decoded.append(len(outputs))

        start = time.time()
        outs = corrector_outputs(inputs.records, variant, model_dir, cfg, done, flush)
        seconds = round(time.time() - start, 2)
        save_predictions(path, outs, key)  # evaluate() writes every row again; harmless
        yield name, outs, {"decode_seconds": seconds, "decoded_batches": len(decoded),
                           "resumed_batches": -(-len(done) // cfg.batch_size)}


def evaluate(cfg: EvalConfig) -> dict:
    """Checks what it reads (check_inputs), then runs every row and writes results.json /
    results.md / predictions; returns the results."""
    inputs = check_inputs(cfg)
    records, refs = inputs.records, inputs.refs
    srcs = [r["source"] for r in records]
    pred_dir = os.path.join(cfg.out_dir, "predictions")
    os.makedirs(pred_dir, exist_ok=True)
    write_inputs(pred_dir, records, refs)
    rows, greedy, outputs = [], None, {}
    for name, outs, decoding in _row_outputs(inputs, cfg, pred_dir):
        path = prediction_path(pred_dir, name)
        write_lines(path, outs)
        greedy = outs if greedy is None else greedy
        outputs[name] = outs
        scores = score_row(outs, greedy, refs, srcs, cfg.metric_names, cfg.bootstrap_samples,
                           cfg.seed)
        rows.append({"name": name, "metrics": scores, "length": output_length(outs, refs),
                     "predictions": os.path.relpath(path, cfg.out_dir), **decoding,
                     "training": inputs.training.get(name)})
        logging.info("%s: %s", name, {k: round(v["score"], 2) for k, v in scores.items()})
    results = {"task": cfg.task, "dataset": cfg.dataset, "split": cfg.split, "num_examples": len(records),
               "records_without_candidates": inputs.without_candidates,
               "metrics": list(cfg.metric_names), "main_metric": cfg.metric_names[0],
               "rows": rows, "comparisons": comparisons(outputs, refs, srcs, cfg),
               "breakdown": _breakdown(records, outputs, refs, srcs, cfg),
               "closest_candidates": breakdowns.closest_candidates(
                   records, {row: outputs[row] for row, _ in CORRECTOR_ROWS if row in outputs}),
               "slot_mentions": slot_mentions.for_dataset(cfg.dataset, records, refs[0], outputs),
               "notes": inputs.notes, "tags": dict(cfg.tags), "commit": code_version(),
               "config": {k: v for k, v in dataclasses.asdict(cfg).items()}}
    atomic_write_text(os.path.join(cfg.out_dir, "results.json"),
                      json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(os.path.join(cfg.out_dir, "results.md"), markdown_table(results))
    return results


if __name__ == "__main__":
    # Gin files import this module by name to register `evaluation`; run as __main__ it would
    # register it a second time. The command is lmcor.cli's.
    sys.exit("usage: lmcor evaluate ... (or python -m lmcor.cli evaluate ...)")
