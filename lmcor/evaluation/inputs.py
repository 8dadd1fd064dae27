"""What `lmcor evaluate` reads, all checked before it writes anything or starts any work.

`check_inputs` refuses, in one error naming the file, line and field or the Gin binding: an
EVAL_DIR this process cannot write, a pool that does not read (missing, truncated, a bad line),
a task that is not registered, a record with candidates but no greedy one for the LLM-greedy row,
and a corrector folder that cannot be decoded (lmcor.inference.run_dir.check_model_dir:
checkpoints, released weights' sha256, task vocabulary, base weights). Then the evaluation runs
to its end without finding a mistake in what it was given after minutes of decoding.
"""
import dataclasses
import difflib
import json
import os
import tempfile
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import gin

from lmcor.data.corrector_input import ROW_NAMES, VARIANTS
from lmcor.data.pool_schema import fail
from lmcor.evaluation import rerank
from lmcor.paths import TRAIN_SUMMARY

# (table row, task variant) of each trained corrector, in table order.
CORRECTOR_ROWS = tuple((name, variant) for variant, name in ROW_NAMES.items())
NO_MODEL_DIR = "no MODEL_DIR given"  # the note of a row left out on purpose (pool-only tables)


@dataclasses.dataclass
class Inputs:
    records: List[dict]
    refs: List[List]  # sacreBLEU's layout (reference_streams)
    correctors: List[Tuple[str, str, str]]  # (row, variant, MODEL_DIR) of the rows to decode
    training: Dict[str, Optional[dict]]  # row -> training_summary
    notes: List[str]
    without_candidates: int  # records whose pool holds no candidate


def task_dataset(task: str) -> str:
    """'e2e_lmcor_single' -> 'e2e' (the variant suffix names the input, not the data)."""
    for variant in sorted(VARIANTS, key=len, reverse=True):
        if task.endswith("_" + variant):
            return task[:-len(variant) - 1]
    return task


def task_metrics(task: str) -> Tuple[str, ...]:
    """The comparison-table metrics, main one first, that the registration of `task` declares
    (its SeqIO metric functions, lmcor.metrics.table_metrics): the task itself, a mixture's
    first task, or for a bare dataset name its `<name>_lmcor` task."""
    import seqio

    import lmcor.tasks  # noqa: F401  (registers the tasks)
    from lmcor.metrics import table_metrics

    tasks, mixtures = set(seqio.TaskRegistry.names()), set(seqio.MixtureRegistry.names())
    name = task if task in tasks | mixtures else f"{task}_lmcor"
    if name in mixtures:
        name = seqio.get_mixture_or_task(name).tasks[0].name
    if name not in tasks:
        raise _no_such_task(task, tasks | mixtures, "its registered task declares the table's "
                            "metrics (or bind evaluation.metric_names)")
    return table_metrics(seqio.get_mixture_or_task(name).metric_fns)


def _no_such_task(task: str, names, otherwise: str = "") -> ValueError:
    """The error for a task name nothing registered: the closest one, else `otherwise`."""
    close = next(iter(difflib.get_close_matches(task, sorted(names), n=1)), None)
    hint = f"did you mean {close!r}?" if close else otherwise
    return ValueError(f"evaluation.task={task!r} (MIXTURE_OR_TASK_NAME): no such task or "
                      "mixture" + (f"; {hint}" if hint else ""))


def check_out_dir(out_dir: str) -> None:
    """Refuses an EVAL_DIR this process cannot write, writing nothing: a folder that does not
    exist yet is not created, and the probe is a file without a name (O_TMPFILE)."""
    target = os.path.abspath(os.path.join(out_dir, "predictions"))
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"EVAL_DIR={out_dir!r}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise PermissionError(f"EVAL_DIR={out_dir!r}: cannot write in {existing} "
                              f"({e.strerror or e})") from None


def load_records(cfg, where: Optional[Dict[str, str]] = None) -> List[dict]:
    """The test records of an EvalConfig: a pool directory if given, else the task's
    registered data source (which honours pool_overrides). `where` receives each pool record's
    "FILE:LINE" by id."""
    if cfg.pool:
        from lmcor.data.pool import read_pool, resolve_pool_path
        records = read_pool(resolve_pool_path(cfg.pool), locations=where)
    else:
        records = _task_source(cfg.task).records(cfg.split)
    out = []
    for rec in records:
        if cfg.max_examples is not None and len(out) >= cfg.max_examples:
            break
        if cfg.num_candidates is not None:
            rec = dict(rec, candidates=rec["candidates"][:cfg.num_candidates])
        if cfg.plant_reference:
            rec = planted(rec, cfg.greedy_generator)
            if rec is None:
                continue
        out.append(rec)
    if not out:
        raise ValueError(f"{cfg.pool or cfg.task}: no records in split {cfg.split!r}")
    return out


def planted(record: Mapping, generator: Optional[str] = None) -> Optional[dict]:
    """The keep-a-good-candidate probe on one record: its first reference takes the place of
    the greedy candidate that the LLM-greedy row reads (`generator`'s, if given) and leaves the
    references. That row then scores a known-good output against the other references, and a
    corrector that keeps a good candidate scores close to it. None for a record with fewer than
    two references or no such greedy candidate (the probe skips it)."""
    refs, cands = record["references"], [dict(c) for c in record["candidates"]]
    greedy = [i for i, c in enumerate(cands) if c["decoding"] == "greedy"
              and (generator is None or c["generator"] == generator)]
    if len(refs) < 2 or not greedy:
        return None
    cands[greedy[0]]["text"] = refs[0]
    return dict(record, references=list(refs[1:]), candidates=cands)


def _task_source(task: str):
    import seqio

    import lmcor.tasks  # noqa: F401  (registers the tasks)
    names = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    if task not in names:  # asked first: seqio logs every task it knows before it refuses
        raise _no_such_task(task, names)
    source = getattr(seqio.get_mixture_or_task(task), "source", None)
    if not hasattr(source, "records"):  # a mixture, or a TFDS-prepared pool
        raise ValueError(f"evaluation.task={task!r}: not a task over Python pool records; "
                         "give its test pool folder as evaluation.pool (EVAL_POOL)")
    return source


def reference_streams(records: Sequence[Mapping], max_references: Optional[int]) -> List[List]:
    """sacreBLEU's layout: stream k holds every record's k-th reference (None where absent)."""
    refs = [r["references"][:max_references] for r in records]
    missing = [r["id"] for r, x in zip(records, refs) if not x]
    if missing:
        raise ValueError(f"record {missing[0]!r}: field 'references': empty ({len(missing)} "
                         "records have no reference)")
    width = max(len(x) for x in refs)
    return [[x[k] if k < len(x) else None for x in refs] for k in range(width)]


def training_summary(model_dir: Optional[str]) -> Optional[dict]:
    """What MODEL_DIR/train_summary.json (written by the trainer) says of a corrector's
    training: examples seen, training seconds, steps, the selected step; None without one."""
    path = os.path.join(model_dir, TRAIN_SUMMARY) if model_dir else ""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            summary = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    return {k: summary.get(k) for k in ("examples_seen", "train_seconds", "step", "best_step",
                                        "stopped")}


def corrector_bindings(variant: str, cfg) -> List[str]:
    """The Gin bindings a row's corrector decodes with, after its run's own config.gin."""
    bindings = [f"corrector_settings.variant = '{variant}'", *cfg.corrector_bindings]
    if cfg.num_candidates is not None:
        bindings.append(f"corrector_options.k = {cfg.num_candidates}")
    return bindings


def _check_greedy(records: Sequence[Mapping], generator: Optional[str],
                  where: Mapping[str, str]) -> None:
    try:
        rerank.greedy_outputs(records, generator)
    except rerank.NoGreedyCandidate as e:
        binding = f" from evaluation.greedy_generator={generator!r}" if generator else ""
        fail(where.get(e.record_id, f"record {e.record_id!r}"), "candidates",
             f"no greedy candidate{binding}")


def check_inputs(cfg) -> Inputs:
    """Everything an EvalConfig's evaluation reads, checked (see the module doc). Reading the
    corrector folders' configs replaces the Gin config, which `cfg` has already been read from."""
    from lmcor.inference.run_dir import check_model_dir

    check_out_dir(cfg.out_dir)
    where: Dict[str, str] = {}
    records = load_records(cfg, where)
    refs = reference_streams(records, cfg.max_references)
    _check_greedy(records, cfg.greedy_generator, where)
    notes = []
    empty = sum(not r["candidates"] for r in records)
    if empty:
        notes.append(f"{empty} of {len(records)} records have no candidates: the pool rows output "
                     "an empty text for them, the correctors read their source alone")
    correctors, training = [], {}
    for name, variant in CORRECTOR_ROWS:
        model_dir = cfg.model_dirs.get(name)
        if not model_dir or not os.path.isdir(model_dir):
            notes.append(f"row {name!r} omitted: " + (f"MODEL_DIR {model_dir!r} does not exist"
                                                      if model_dir else NO_MODEL_DIR))
            continue
        gin.clear_config()
        check_model_dir(model_dir, gin_bindings=corrector_bindings(variant, cfg))
        correctors.append((name, variant, model_dir))
        training[name] = training_summary(model_dir)
    return Inputs(records, refs, correctors, training, notes, empty)
