"""`lmcor evaluate`: the paper's comparison table for one task's test pool.

    lmcor evaluate --gin_file=gin/runs/evaluate.gin --gin_file=gin/tasks/e2e.gin \
        --gin.EVAL_DIR=/runs/e2e/eval --gin.FINETUNE_DIR=/runs/e2e/finetune \
        --gin.LMCOR_SINGLE_DIR=/runs/e2e/single --gin.LMCOR_DIR=/runs/e2e/lmcor

Rows: LLM greedy, LLM sample, best single system (pools with several generators), MBR rerank,
oracle, fine-tuned, LMCor single, LMCor. A row whose MODEL_DIR is unset or missing is omitted
with a logged note (kept in results.json's "notes"). Every metric carries a percentile
bootstrap 95% interval and a paired bootstrap test against LLM greedy (lmcor.evaluation.metrics).

EVAL_DIR receives `results.json`, `results.md` (lmcor.evaluation.results_table) and `predictions/` (one text
file per row, plus the sources and any complete reference streams; lmcor.evaluation.predictions) so
`lmcor score` can re-score every number. Predictions already on disk are reused: a rerun decodes
only the rows that are missing or were decoded from other inputs, weights or settings.
"""
import dataclasses
import json
import os
import sys
import time
from typing import Dict, List, Mapping, Optional, Sequence

import gin
from absl import logging

from lmcor import cli
from lmcor import config as gin_config
from lmcor.gin_command import GinFlags
from lmcor.evaluation import breakdowns, metrics, rerank
from lmcor.io_utils import atomic_write_text
from lmcor.evaluation.predictions import (cached_predictions, prediction_key, prediction_path,
                               save_predictions, write_inputs, write_lines)
from lmcor.evaluation.results_table import GREEDY_ROW, METRIC_LABELS, markdown_table

# Main metric first. "rougeL" is ROUGE-L over the whole output (rouge-score's rougeLsum, which
# equals rougeL on one-line outputs).
METRICS_BY_DATASET = {"e2e": ("bleu", "rougeL", "chrf"), "jfleg": ("gleu",),
                      "wmt": ("chrf", "bleu"), "xsum": ("rougeL", "bleu")}
_BOOTSTRAP_NAME = {"rougeL": "rougeLsum"}
CORRECTOR_ROWS = (("fine-tuned", "finetune"), ("LMCor single", "lmcor_single"), ("LMCor", "lmcor"))
NO_MODEL_DIR = "no MODEL_DIR given"  # the note of a row left out on purpose (pool-only tables)


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
               breakdown: Optional[str] = "auto") -> EvalConfig:
    """Gin entry point (gin/runs/evaluate.gin binds it from the task file's macros). `task` is
    a registered task (any variant: the pool is the same) or, with `pool`, just a name.
    `num_candidates` keeps each pool's first k candidates (for every row; the correctors get
    corrector_options.k = k); `tags` (e.g. {"ablation": "num_candidates", "value": 3}) are
    copied into results.json for `lmcor report`'s ablation plots. `breakdown` names a grouping
    of the test inputs (lmcor.evaluation.breakdowns) to score the main metric on per group; "auto" takes
    the dataset's (E2E: by number of attributes), None none."""
    dataset = task_dataset(task)
    family = "wmt" if dataset.startswith("wmt") else dataset
    names = tuple(metric_names or METRICS_BY_DATASET.get(family, ("bleu", "chrf")))
    unknown = [m for m in names if m not in METRIC_LABELS]
    if unknown:
        raise ValueError(f"evaluation.metric_names: unknown {unknown}; known {sorted(METRIC_LABELS)}")
    if mbr_utility not in rerank.UTILITIES:
        raise ValueError(f"evaluation.mbr_utility={mbr_utility!r}; expected one of {rerank.UTILITIES}")
    dirs = dict(zip([r for r, _ in CORRECTOR_ROWS], (finetune_dir, lmcor_single_dir, lmcor_dir)))
    if breakdown == "auto":
        breakdown = breakdowns.DEFAULT_BY_DATASET.get(dataset)
    if breakdown is not None and breakdown not in breakdowns.BREAKDOWNS:
        raise ValueError(f"evaluation.breakdown={breakdown!r}; expected 'auto', None or one of "
                         f"{sorted(breakdowns.BREAKDOWNS)}")
    return EvalConfig(task, dataset, out_dir, split, pool, dirs, greedy_generator, mbr_utility, names,
                      max_references, max_examples, bootstrap_samples, seed, batch_size,
                      tuple(corrector_bindings), num_candidates, dict(tags or {}), breakdown)


# ---------------------------------------------------------------------- data


def task_dataset(task: str) -> str:
    """'e2e_lmcor_single' -> 'e2e' (the variant suffix names the input, not the data)."""
    for variant in sorted(("finetune", "lmcor", "lmcor_single"), key=len, reverse=True):
        if task.endswith("_" + variant):
            return task[:-len(variant) - 1]
    return task


def load_records(cfg: EvalConfig) -> List[dict]:
    """The test records: a pool directory if given, else the task's registered data source
    (which honours pool_overrides)."""
    if cfg.pool:
        from lmcor.data.pool import read_pool, resolve_pool_path
        records = read_pool(resolve_pool_path(cfg.pool))
    else:
        import seqio

        import lmcor.tasks  # noqa: F401  (registers the tasks)
        source = getattr(seqio.get_mixture_or_task(cfg.task), "source", None)
        if not hasattr(source, "records"):  # a mixture, or a TFDS-prepared pool
            raise ValueError(f"evaluation.task={cfg.task!r}: not a task over Python pool records; "
                             "give its test pool folder as evaluation.pool (EVAL_POOL)")
        records = source.records(cfg.split)
    out = []
    for rec in records:
        if cfg.max_examples is not None and len(out) >= cfg.max_examples:
            break
        if cfg.num_candidates is not None:
            rec = dict(rec, candidates=rec["candidates"][:cfg.num_candidates])
        out.append(rec)
    if not out:
        raise ValueError(f"{cfg.pool or cfg.task}: no records in split {cfg.split!r}")
    return out


def reference_streams(records: Sequence[Mapping], max_references: Optional[int]) -> List[List]:
    """sacreBLEU's layout: stream k holds every record's k-th reference (None where absent)."""
    refs = [r["references"][:max_references] for r in records]
    missing = [r["id"] for r, x in zip(records, refs) if not x]
    if missing:
        raise ValueError(f"record {missing[0]!r}: field 'references': empty ({len(missing)} "
                         "records have no reference)")
    width = max(len(x) for x in refs)
    return [[x[k] if k < len(x) else None for x in refs] for k in range(width)]


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


def _corpus(metric: str, hyps, refs, srcs) -> float:
    if metric == "gleu":
        return metrics.gleu(srcs, hyps, refs)
    if metric in metrics.ROUGE_TYPES:
        return metrics.rouge(hyps, refs)[metric]
    return getattr(metrics, metric)(hyps, refs)


def corrector_outputs(records: Sequence[Mapping], variant: str, model_dir: str,
                      cfg: EvalConfig) -> List[str]:
    """Decodes with the trained corrector in model_dir (lmcor.corrector: the one inference
    path). Its run config replaces the current Gin config, which evaluate() has already read."""
    from lmcor.corrector import Corrector

    gin.clear_config()
    bindings = [f"corrector_settings.variant = '{variant}'", *cfg.corrector_bindings]
    if cfg.num_candidates is not None:
        bindings.append(f"corrector_options.k = {cfg.num_candidates}")
    corrector = Corrector.from_model_dir(model_dir, gin_bindings=bindings)
    return corrector.correct(records, batch_size=cfg.batch_size, progress=True)


def _breakdown(records, outputs, refs, srcs, cfg: "EvalConfig") -> Optional[dict]:
    if cfg.breakdown is None:
        return None
    main = _BOOTSTRAP_NAME.get(cfg.metric_names[0], cfg.metric_names[0])

    def score(idx, hyps):
        return _corpus(main, [hyps[i] for i in idx], [[s[i] for i in idx] for s in refs],
                       [srcs[i] for i in idx])

    return breakdowns.score_groups(cfg.breakdown, records, outputs, score)


def training_summary(model_dir: Optional[str]) -> Optional[dict]:
    """What MODEL_DIR/train_summary.json (written by the trainer) says of a corrector's
    training: examples seen, training seconds, steps, the selected step; None without one."""
    path = os.path.join(model_dir, "train_summary.json") if model_dir else ""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        summary = json.load(f)
    return {k: summary.get(k) for k in ("examples_seen", "train_seconds", "step", "best_step",
                                        "stopped")}


# Paired tests between trained rows: does LMCor's pool beat the same model on the source alone?
COMPARISONS = (("LMCor", "fine-tuned"),)


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


def _row_outputs(records, cfg: EvalConfig, refs, pred_dir: str, notes: List[str]):
    """(row name, outputs, decoding seconds or None) in table order; a corrector row whose
    predictions are already saved is not decoded again (seconds None)."""
    for row, outs in baseline_rows(records, cfg, refs).items():
        yield row, outs, None
    for name, variant in CORRECTOR_ROWS:
        model_dir = cfg.model_dirs.get(name)
        if not model_dir or not os.path.isdir(model_dir):
            notes.append(f"row {name!r} omitted: " + (f"MODEL_DIR {model_dir!r} does not exist"
                                                      if model_dir else NO_MODEL_DIR))
            logging.warning(notes[-1])
            continue
        path = prediction_path(pred_dir, name)
        key = prediction_key(records, model_dir, cfg.corrector_bindings, cfg.num_candidates)
        outs = cached_predictions(path, key, len(records))
        if outs is not None:
            yield name, outs, None
            continue
        start = time.time()
        outs = corrector_outputs(records, variant, model_dir, cfg)
        seconds = round(time.time() - start, 2)
        save_predictions(path, outs, key)  # evaluate() writes every row again; harmless
        yield name, outs, seconds


def evaluate(cfg: EvalConfig) -> dict:
    """Runs every row, writes results.json / results.md / predictions; returns the results."""
    records = load_records(cfg)
    refs = reference_streams(records, cfg.max_references)
    srcs = [r["source"] for r in records]
    pred_dir = os.path.join(cfg.out_dir, "predictions")
    os.makedirs(pred_dir, exist_ok=True)
    write_inputs(pred_dir, records, refs)
    notes: List[str] = []
    rows, greedy, outputs = [], None, {}
    for name, outs, seconds in _row_outputs(records, cfg, refs, pred_dir, notes):
        path = prediction_path(pred_dir, name)
        write_lines(path, outs)
        greedy = outs if greedy is None else greedy
        outputs[name] = outs
        scores = score_row(outs, greedy, refs, srcs, cfg.metric_names, cfg.bootstrap_samples,
                           cfg.seed)
        rows.append({"name": name, "metrics": scores,
                     "predictions": os.path.relpath(path, cfg.out_dir), "decode_seconds": seconds,
                     "training": training_summary(cfg.model_dirs.get(name))})
        logging.info("%s: %s", name, {k: round(v["score"], 2) for k, v in scores.items()})
    results = {"task": cfg.task, "dataset": cfg.dataset, "split": cfg.split, "num_examples": len(records),
               "metrics": list(cfg.metric_names), "main_metric": cfg.metric_names[0],
               "rows": rows, "comparisons": comparisons(outputs, refs, srcs, cfg),
               "breakdown": _breakdown(records, outputs, refs, srcs, cfg),
               "notes": notes, "tags": dict(cfg.tags), "commit": gin_config.git_revision(),
               "config": {k: v for k, v in dataclasses.asdict(cfg).items()}}
    atomic_write_text(os.path.join(cfg.out_dir, "results.json"),
                      json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(os.path.join(cfg.out_dir, "results.md"), markdown_table(results))
    return results


def _main(flags: GinFlags) -> int:
    logging.set_verbosity(logging.INFO)
    gin_config.parse_gin(flags.files, flags.bindings, finalize=False)
    results = evaluate(evaluation())
    print(markdown_table(results), end="")
    for note in results["notes"]:
        print(f"note: {note}")
    return 0


def main(argv=None) -> int:
    return cli.run_gin_command("evaluate", sys.argv[1:] if argv is None else argv, _main)


if __name__ == "__main__":
    # A Gin command runs through the CLI, which checks its flags and then imports this module
    # under its own name; run as __main__, its configurables would be registered twice.
    sys.exit("usage: lmcor evaluate ... (or python -m lmcor.cli evaluate ...)")
