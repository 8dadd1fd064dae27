"""The flags a pipeline builds for its stages (training rows, ablations, test
variants, budgets, the GPU scale) parse with the real Gin files and bind what they mean to."""
import json
import os
import subprocess
import sys

import pytest

from lmcor.pipeline import table as pipeline_table

from _pipeline_stages import Planned, record_stages


def _query(args, names):
    """{name: value} that the Gin files and bindings in a stage's `args` give each name."""
    import gin

    from lmcor.cli import gin_flags

    files, bindings, _ = gin_flags.split_gin_flags(args)
    try:
        gin_flags.parse_gin(files, bindings, finalize=False)
        return {name: gin.query_parameter(name) for name in names}
    finally:
        gin.clear_config()


def test_built_flags_parse_with_the_real_gin_files(tmp_path):
    import gin

    from lmcor.cli import gin_flags
    from lmcor.tasks.common import pool_overrides

    pools = {"dev": ["/p/dev_a", "/p/dev_b"], "test": "/p/test"}  # two dev pools: both read
    args = pipeline_table._train_args("e2e", "finetune", str(tmp_path / "m"), pools, 7,
                                  ["--gin_file=models/t5_1_1_tiny.gin",
                                   "--gin_file=runs/train_corrector.gin"])
    files, bindings, rest = gin_flags.split_gin_flags(args)
    assert not rest
    try:
        gin_flags.parse_gin(files, bindings, finalize=False)
        assert gin.query_parameter("%TRAIN_STEPS") == 7
        # The row's variant wins over the task file's default (e2e_lmcor).
        assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "e2e_finetune"
        assert pool_overrides() == {"e2e": pools}
    finally:
        gin.clear_config()


def test_only_the_dev_split_reads_several_pools():
    dev = ["data/pools/e2e_dev_e2e_attributes.jsonl.gz", "data/pools/e2e_dev_e2e_mr.jsonl.gz"]
    found = pipeline_table._absolute_pools("dev", dev)
    assert [p.endswith(d) and os.path.isfile(p) for p, d in zip(found, dev)] == [True, True]
    with pytest.raises(ValueError, match=r"pipeline.pools\['test'\]: one pool"):
        pipeline_table._absolute_pools("test", dev)


@pytest.mark.parametrize("run_file", ["runs/quickstart_train.gin", "runs/tables/e2e.gin",
                                      "runs/tables/jfleg.gin", "runs/tables/wmt.gin"])
def test_pipeline_configs_build_flags_that_parse(run_file, tmp_path):
    """Every row of the quickstart and of the README tables trains the Gemma recipe on its own
    task variant, with the pools the config names."""
    import gin

    from lmcor.cli import gin_flags

    try:
        gin_flags.parse_gin([run_file], [], finalize=False)
        task = gin.query_parameter("pipeline.task")
        rows = gin.query_parameter("pipeline.rows")
        flags = gin.query_parameter("pipeline.train_flags")
        bound = gin.get_bindings("pipeline")
        released = bound.get("correctors") or {}
        variants = bound.get("test_variants") or {}
        sampled = {"dev": "/p/dev", "test": "/p/test"}
        pools = bound.get("pools") or ({} if bound.get("sample") is False else sampled)
    finally:
        gin.clear_config()
    # Every table has an LMCor row and a fine-tuned row, trained here or released.
    assert {"lmcor", "finetune"} <= {*rows, *released}
    for row in rows:
        args = pipeline_table._train_args(task, row, str(tmp_path / row), pools, 3, flags)
        files, bindings, rest = gin_flags.split_gin_flags(args)
        assert not rest
        try:
            gin_flags.parse_gin(files, bindings, finalize=False)
            assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == f"{task}_{row}"
            assert gin.query_parameter("gemma_model.gguf") == "bundled"
            assert ("pool_overrides.by_dataset" in " ".join(bindings)) == bool(pools)
        finally:
            gin.clear_config()
    # A whole-test-set variant lifts the table's limit on test inputs.
    for name, extra in variants.items():
        table = ["--gin_file=runs/evaluate.gin", f"--gin_file=tasks/{task}.gin",
                 "--gin.EVAL_MAX_EXAMPLES=200"]
        args = pipeline_table._eval_args(table, str(tmp_path / name),
                                     {"lmcor": str(tmp_path / "lmcor")}, extra)
        files, bindings, _ = gin_flags.split_gin_flags(args)
        try:
            gin_flags.parse_gin(files, bindings, finalize=False)
            assert gin.query_parameter("%EVAL_MAX_EXAMPLES") == (None if name == "full_test"
                                                                 else 200)
        finally:
            gin.clear_config()


def test_ablation_flags_parse_and_reach_train_and_evaluate(tmp_path):
    """Each ablation of the README's E2E ablation config trains the `lmcor` variant with its
    own setting, and its evaluation carries the tag the report groups by, its own output folder
    and corrector, and its overrides (the prompt-B test pool) over the table's."""
    import gin

    from lmcor import paths
    from lmcor.cli import gin_flags
    from lmcor.data.corrector_input import CorrectorOptions

    try:
        gin_flags.parse_gin(["runs/tables/e2e_ablations.gin"], [], finalize=False)
        flags = gin.query_parameter("pipeline.train_flags")
        ablations = gin.query_parameter("pipeline.ablations")
        train_only = gin.query_parameter("pipeline.ablation_train_flags")
        test_variants = gin.query_parameter("pipeline.test_variants")
    finally:
        gin.clear_config()
    assert {"k1", "k4", "order_shuffled"} <= set(ablations)
    pools = {"dev": "/p/dev", "test": "/p/test"}
    for name, extra in ablations.items():
        args = pipeline_table._train_args("e2e", "lmcor", str(tmp_path / name), pools, 3, flags,
                                      [*extra, *train_only])
        files, bindings, rest = gin_flags.split_gin_flags(args)
        assert not rest
        try:
            gin_flags.parse_gin(files, bindings, finalize=False)
            assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "e2e_lmcor"
            assert gin.query_parameter("Checkpointer.keep") == 1
            opts = CorrectorOptions()
            assert (opts.k, opts.order) == ((int(name[1]), "fixed") if name[0] == "k"
                                            else (5, "shuffled"))
        finally:
            gin.clear_config()
    common = ["--gin_file=runs/evaluate.gin", "--gin_file=tasks/e2e.gin",
              "--gin.EVAL_POOL='/p/test'", "--gin.EVAL_MAX_EXAMPLES=200"]
    eval_args = {name: pipeline_table._eval_args(common, str(tmp_path / name / "eval"),
                                             {"lmcor": str(tmp_path / "m")}, extra)
                 for name, extra in {**ablations, **test_variants}.items()}
    # `lmcor evaluate` registers fewer configurables than this test process has imported by
    # now (the trainer's, above): parse its flags where only its own imports exist.
    (tmp_path / "args.json").write_text(json.dumps(list(eval_args.values())))
    check = ("import json, sys, gin, lmcor.evaluation.evaluate\n"
             "from lmcor.cli import gin_flags\n"
             "for args in json.load(open(sys.argv[1])):\n"
             "    files, bindings, _ = gin_flags.split_gin_flags(args)\n"
             "    gin_flags.parse_gin(files, bindings, finalize=False)\n"
             "    gin.clear_config()\n")
    done = subprocess.run([sys.executable, "-P", "-c", check, str(tmp_path / "args.json")],
                          cwd=paths.REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    for name, args in eval_args.items():
        files, bindings, _ = gin_flags.split_gin_flags(args)
        try:
            gin_flags.parse_gin(files, bindings, finalize=False)
            assert gin.query_parameter("%EVAL_DIR") == str(tmp_path / name / "eval")
            assert gin.query_parameter("%LMCOR_DIR") == str(tmp_path / "m")
            assert "ablation" in gin.query_parameter("%EVAL_TAGS")
            pool = gin.query_parameter("%EVAL_POOL")
            assert pool == ("data/pools/e2e_test_e2e_mr.jsonl.gz" if name == "prompt_A_to_B"
                            else "/p/test")
        finally:
            gin.clear_config()


def test_a_budget_reaches_every_training_run_and_bad_keys_are_refused(tmp_path):
    budget = {"examples": 1200, "eval_every_examples": 300, "patience": 3}
    args = pipeline_table._train_args("e2e", "lmcor", str(tmp_path / "m"), {}, 100,
                                  ["--gin_file=models/t5_1_1_tiny.gin",
                                   "--gin_file=runs/train_corrector.gin",
                                   *pipeline_table.budget_flags(budget)])
    assert _query(args, ["train.train_examples", "train.eval_every_examples",
                         "train.patience"]) == {"train.train_examples": 1200,
                                                "train.eval_every_examples": 300,
                                                "train.patience": 3}
    assert pipeline_table.budget_flags({"epochs": 2.5}) == ["--gin.train.train_epochs=2.5"]
    with pytest.raises(ValueError, match="steps"):
        pipeline_table.budget_flags({"steps": 3})


@pytest.mark.parametrize("table", ["e2e", "jfleg", "wmt"])
def test_the_gpu_scale_file_rescales_every_training_run_of_a_table(table, tmp_path, monkeypatch):
    import gin

    from lmcor.cli import gin_flags

    stages = record_stages(monkeypatch)
    dev = "data/pools/e2e_dev_e2e_attributes.jsonl.gz"  # a pool that exists; not read here
    pools = [] if table == "wmt" else [f"pipeline.pools = {{'dev': {dev!r}, 'test': {dev!r}}}"]
    try:
        gin_flags.parse_gin([f"runs/tables/{table}.gin", "runs/gpu_scale.gin"],
                             [f"RUN_DIR = {str(tmp_path)!r}", *pools], finalize=False)
        with pytest.raises(Planned):
            pipeline_table.pipeline()
    finally:
        gin.clear_config()
    trains = [args for _, command, args in stages if command == "train"]
    assert len(trains) == 2  # the fine-tuned and LMCor rows
    for args in trains:
        assert _query(args, ["%BATCH_SIZE", "train.train_examples", "%TRAIN_STEPS"]) == {
            "%BATCH_SIZE": 128, "train.train_examples": 256000, "%TRAIN_STEPS": 2000}
    evaluations = [args for _, command, args in stages if command == "evaluate"]
    assert evaluations and all("--gin.evaluation.batch_size=128" in e for e in evaluations)
