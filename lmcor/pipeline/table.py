"""The `pipeline` configurable (Gin: `pipeline.*`): one table's stages, from its pools to its
report, run by `lmcor pipeline` (and by `lmcor quickstart`, with gin/runs/quickstart.gin).

    lmcor pipeline --gin_file=gin/runs/tables/e2e.gin          # a README table
    lmcor quickstart [--gin.QUICKSTART_EXAMPLES=4 ...]        # gin/runs/quickstart.gin

Stages, each a separate process (lmcor.pipeline.stages):
  1. sample  (unless `pipeline.pools` or `sample=False`) Gemma 3 270M, 5-shot: greedy +
             4 samples for a slice of the task's dev and test sets     -> RUN_DIR/pools/
  2. train   one corrector per row: `finetune` (source only), `lmcor_single` (greedy candidate),
             `lmcor` (the pool); the same run flags and steps for all   -> RUN_DIR/<row>
  3. evaluate  the comparison table on the first `test_examples` test inputs
                                                                -> RUN_DIR/eval/results.{json,md}
  4. variants (optional) `pipeline.ablations`: one more `lmcor` corrector per entry, trained
             and evaluated with that entry's extra flags; `pipeline.test_variants`: the
             table's `lmcor` corrector (or the rows `test_variant_rows` names) evaluated with
             extra flags (test-side ablations, the whole test set)
                                                      -> RUN_DIR/variants/<name>/{lmcor,eval}
  5. report  Markdown + plots (ablation tables from the evaluations' EVAL_TAGS)
                                                                -> RUN_DIR/report/
Every stage resumes from what is on disk: a finished pool or training run is skipped (a DONE
marker records its settings; changed settings run the stage again and the tools resume), and
evaluation reuses saved predictions.
"""
import json
import os
import sys
from typing import Dict, List, Mapping, Optional, Sequence

import gin

from lmcor.checkpoints.released_adapter import MANIFEST as ADAPTER_MANIFEST
from lmcor.data.corrector_input import ROW_NAMES
from lmcor.data.pool import resolve_pool_path
from lmcor.paths import REPO_ROOT, TRAIN_SUMMARY
from lmcor.pipeline.stages import Stages, quoted


def eval_macro(row: str) -> str:
    """The `lmcor evaluate` macro naming a row's corrector folder (gin/runs/evaluate.gin):
    finetune -> FINETUNE_DIR, lmcor_single -> LMCOR_SINGLE_DIR, lmcor -> LMCOR_DIR."""
    return f"{row.upper()}_DIR"


def _sample_args(task: str, pool: str, split: str, examples: int,
                 flags: Sequence[str]) -> List[str]:
    return ["--gin_file=runs/sample.gin", f"--gin_file=tasks/sampling/{task}.gin",
            f"--gin.OUTPUT_DIR={quoted(pool)}", f"--gin.sample_pool.split={quoted(split)}",
            f"--gin.sample_pool.max_examples={examples}", *flags]


BUDGET_KEYS = {"examples": "train_examples", "epochs": "train_epochs",
               "eval_every_examples": "eval_every_examples", "patience": "patience"}


def budget_flags(budget: Optional[Mapping[str, int]]) -> List[str]:
    """`pipeline.budget` ({"examples": N or "epochs": E, "eval_every_examples": M,
    "patience": P}) as `train.*` flags: every row of a table trains on the same number of examples,
    is validated as often, and stops on the same rule."""
    unknown = sorted(set(budget or {}) - set(BUDGET_KEYS))
    if unknown:
        raise ValueError(f"pipeline.budget: unknown {unknown}; expected some of "
                         f"{sorted(BUDGET_KEYS)}")
    return [f"--gin.train.{BUDGET_KEYS[k]}={v!r}" for k, v in (budget or {}).items()]


def _train_args(task: str, row: str, model_dir: str, pools: Mapping[str, object], steps: int,
                flags: Sequence[str], extra: Sequence[str] = ()) -> List[str]:
    """`flags` name the run file (e.g. --gin_file=runs/gemma_corrector.gin) and its settings;
    the row only picks the task variant, so every row shares one recipe. `extra` (an
    ablation's flags) comes last, so its Gin files are read after the task file."""
    overrides = [f"--gin.pool_overrides.by_dataset={json.dumps({task: pools})}"] if pools else []
    return [*flags, f"--gin_file=tasks/{task}.gin", f"--gin.MODEL_DIR={quoted(model_dir)}",
            f"--gin.TRAIN_STEPS={steps}", f"--gin.MIXTURE_OR_TASK_NAME={quoted(task + '_' + row)}",
            *overrides, *extra]


def _eval_args(common: Sequence[str], eval_dir: str, model_dirs: Mapping[str, str],
               extra: Sequence[str] = ()) -> List[str]:
    """`lmcor evaluate` flags: the table's (`common`), then `extra` (an ablation's, so its
    bindings win, e.g. EVAL_POOL), then the output folder and one corrector per row."""
    return [*common, *extra, f"--gin.EVAL_DIR={quoted(eval_dir)}",
            *(f"--gin.{eval_macro(row)}={quoted(path)}" for row, path in model_dirs.items())]


def _released_correctors(correctors: Optional[Mapping[str, str]],
                         rows: Sequence[str]) -> Dict[str, str]:
    """Absolute folders of `pipeline.correctors` (relative ones are found from the current
    directory, else from the repository root), checked before any stage runs."""
    out = {}
    for row, path in dict(correctors or {}).items():
        if row not in ROW_NAMES or row in rows:
            raise ValueError(f"pipeline.correctors: {row!r} must be a row ({sorted(ROW_NAMES)})"
                             f" that pipeline.rows does not also train ({list(rows)})")
        found = path if os.path.isabs(path) or os.path.exists(path) else os.path.join(
            REPO_ROOT, path)
        if not os.path.isdir(found):
            raise ValueError(f"pipeline.correctors[{row!r}]: {path!r} is not a folder")
        out[row] = os.path.abspath(found)
    return out


def _absolute_pools(split: str, path):
    """A split's pool, or list of pools (dev only: the corrector trains on each in turn), as
    absolute paths; relative ones are found as `resolve_pool_path` finds them."""
    if isinstance(path, str):
        return os.path.abspath(resolve_pool_path(path))
    if split == "test":
        raise ValueError(f"pipeline.pools['test']: one pool, not {path!r} (a table scores one "
                         "candidate source; evaluate each pool as its own table)")
    return [os.path.abspath(resolve_pool_path(p)) for p in path]


def _limit(train_steps: int, budget: Optional[Mapping[str, int]]) -> str:
    budget = budget or {}
    if "examples" in budget:
        return f"{budget['examples']:,} examples"
    return f"{budget['epochs']} epochs" if "epochs" in budget else f"{train_steps} steps"


@gin.configurable
def pipeline(run_dir: str = gin.REQUIRED, task: str = "e2e",
               pools: Optional[Mapping[str, object]] = None, sample: bool = True,
               train_examples: int = 64,
               test_examples: Optional[int] = 32, train_steps: int = 300,
               budget: Optional[Mapping[str, int]] = None,
               rows: Sequence[str] = ("finetune", "lmcor"),
               correctors: Optional[Mapping[str, str]] = None, evaluate_adapters: bool = False,
               sample_flags: Sequence[str] = (),
               train_flags: Sequence[str] = (), evaluate_flags: Sequence[str] = (),
               train_overrides: Sequence[str] = (), evaluate_overrides: Sequence[str] = (),
               ablations: Optional[Mapping[str, Sequence[str]]] = None,
               ablation_train_flags: Sequence[str] = (),
               test_variants: Optional[Mapping[str, Sequence[str]]] = None,
               test_variant_rows: Optional[Mapping[str, Sequence[str]]] = None) -> str:
    """Runs every stage into run_dir; returns the report's path. `pools` ({"dev": DIR,
    "test": DIR}, e.g. from scripts/real_pools.py; "dev" may list several) skips sampling, as
    does `sample=False` with no pools (the task's own data: WMT's system outputs);
    `train_examples` then does not apply and `test_examples` takes the first test inputs (None:
    all of them). `ablations` / `test_variants` map a name to Gin flags (e.g.
    ["--gin_file=ablations/num_candidates_2.gin"]); see the module doc. `ablation_train_flags` go
    to every ablation's training only (e.g. keep fewer checkpoints: `lmcor evaluate` does not
    know the trainer's configurables). A test variant evaluates the `lmcor` row's corrector
    (trained or from `correctors`) unless `test_variant_rows` names its rows (e.g. every row of the
    table on the whole test set: {"full_test": ["finetune", "lmcor_single", "lmcor"]}).
    `budget` (see `budget_flags`) ends each training run by examples seen and validation;
    `train_steps` stays the cap. `correctors` maps a row to a trained corrector folder (a
    MODEL_DIR or a released adapter, e.g. {"lmcor": "data/correctors/e2e"}) that the table
    evaluates instead of training one; with no row to train, only the test split is sampled.
    `evaluate_adapters` exports each trained row as what a release holds, a bf16 LoRA adapter
    of its best checkpoint (RUN_DIR/adapters/<row>, `lmcor export --adapter`), and evaluates
    that: the table's numbers are then the released correctors' own.
    `train_overrides` / `evaluate_overrides` come after the table's own flags, so one file can
    rescale every table (gin/runs/gpu_scale.gin: batch 128 on one GPU)."""
    train_flags = [*train_flags, *budget_flags(budget), *train_overrides]
    evaluate_flags = [*evaluate_flags, *evaluate_overrides]
    released = _released_correctors(correctors, rows)
    ablations, test_variants = dict(ablations or {}), dict(test_variants or {})
    variant_rows = {name: ["lmcor"] for name in test_variants}
    for name, names in dict(test_variant_rows or {}).items():
        if name not in test_variants:
            raise ValueError(f"pipeline.test_variant_rows: {name!r} is not a test variant "
                             f"(test_variants: {sorted(test_variants)})")
        missing = [r for r in names if r not in rows and r not in released]
        if missing or not names:
            raise ValueError(f"pipeline.test_variant_rows[{name!r}]: {list(names)} must be "
                             f"some of the table's rows {[*rows, *released]}")
        variant_rows[name] = list(names)
    unknown = [r for r in rows if r not in ROW_NAMES]
    if unknown:
        raise ValueError(f"pipeline.rows: unknown {unknown}; expected some of {sorted(ROW_NAMES)}")
    if (any("lmcor" in names for names in variant_rows.values()) and "lmcor" not in rows
            and "lmcor" not in released):
        raise ValueError("pipeline.test_variants evaluate the `lmcor` row's corrector; "
                         "add 'lmcor' to pipeline.rows or pipeline.correctors")
    clash = sorted(set(ablations) & set(test_variants))
    if clash:
        raise ValueError(f"pipeline: {clash} named in both ablations and test_variants")
    sample = sample and not pools
    splits = ("dev", "test") if rows else ("test",)
    pipe = Stages(run_dir, stages=(len(splits) if sample else 0)
                    + len(rows) * (2 if evaluate_adapters else 1) + 2
                    + 2 * len(ablations) + len(test_variants))
    if not sample:
        pools = {split: _absolute_pools(split, path) for split, path in (pools or {}).items()}
    else:
        pools = {split: os.path.join(pipe.run_dir, "pools", f"{task}_{split}")
                 for split in ("dev", "test")}
        for split, n in [(s, train_examples if s == "dev" else test_examples) for s in splits]:
            pipe.command(f"sample {task} {split} ({n} inputs)", "sample",
                         _sample_args(task, pools[split], split, n, sample_flags), pools[split],
                         {"examples": n, "flags": list(sample_flags)})
    common_eval = ["--gin_file=runs/evaluate.gin", f"--gin_file=tasks/{task}.gin",
                   *([f"--gin.EVAL_POOL={quoted(pools['test'])}"] if "test" in pools else []),
                   f"--gin.EVAL_MAX_EXAMPLES={test_examples}", *evaluate_flags]
    settings = {"steps": train_steps, "flags": list(train_flags), "pools": pools}
    trained = {}  # row -> the folder its evaluations read
    for row in rows:
        model_dir = os.path.join(pipe.run_dir, row)
        pipe.command(f"train {row} ({_limit(train_steps, budget)})", "train",
                     _train_args(task, row, model_dir, pools, train_steps, train_flags), model_dir,
                     settings, writes=TRAIN_SUMMARY)
        trained[row] = model_dir
        if evaluate_adapters:
            trained[row] = os.path.join(pipe.run_dir, "adapters", row)
            pipe.command(f"export {row} (bf16 adapter)", "export",
                         [model_dir, f"--out={trained[row]}", "--adapter"], trained[row],
                         {"row": settings}, writes=ADAPTER_MANIFEST)
    pipe.command("evaluate", "evaluate", _eval_args(
        common_eval, os.path.join(pipe.run_dir, "eval"), {**trained, **released}))
    for name, flags in [*ablations.items(), *test_variants.items()]:
        folder = os.path.join(pipe.run_dir, "variants", name)
        if name in ablations:
            model_dirs = {"lmcor": os.path.join(folder, "lmcor")}
            extra = [*flags, *ablation_train_flags]
            pipe.command(f"variant {name}: train lmcor ({_limit(train_steps, budget)})", "train",
                         _train_args(task, "lmcor", model_dirs["lmcor"], pools, train_steps,
                                     train_flags, extra), model_dirs["lmcor"],
                         dict(settings, ablation=extra), writes=TRAIN_SUMMARY)
        else:
            model_dirs = {row: {**trained, **released}[row] for row in variant_rows[name]}
        pipe.command(f"variant {name}: evaluate", "evaluate", _eval_args(
            common_eval, os.path.join(folder, "eval"), model_dirs, flags))
    pipe.command("report", "report", [pipe.run_dir])
    pipe.finish()
    with open(os.path.join(pipe.run_dir, "eval", "results.md"), encoding="utf-8") as f:
        inputs = "all" if test_examples is None else test_examples
        print(f"\n{task} ({inputs} test inputs), {pipe.timings['total']:.0f}s in all:\n"
              f"{f.read()}")
    return os.path.join(pipe.run_dir, "report", "report.md")


if __name__ == "__main__":
    # Gin files import this module by name to register `pipeline`; run as __main__ it would
    # register it a second time. The command is lmcor.cli's.
    sys.exit("usage: lmcor pipeline ... (or python -m lmcor.cli pipeline ...)")
