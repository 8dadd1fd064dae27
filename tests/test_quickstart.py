"""Quickstart mechanics: stages run as processes, finished stages are skipped on rerun, changed
settings rerun them, a failing stage stops the pipeline naming itself; the flags it builds
parse with the real Gin files."""
import json
import os
import subprocess
import sys

import pytest

from lmcor import quickstart


def test_stages_resume_from_done_markers(tmp_path):
    src, out = tmp_path / "in.json", tmp_path / "stage" / "out.json"
    src.write_text('{"a": 1}')
    out.parent.mkdir()
    pipe = quickstart.Pipeline(str(tmp_path), stages=3)
    pipe.run("copy", "json.tool", [str(src), str(out)], str(out.parent), {"n": 1})
    assert json.loads(out.read_text()) == {"a": 1}
    out.unlink()
    pipe.run("copy", "json.tool", [str(src), str(out)], str(out.parent), {"n": 1})
    assert not out.exists()  # same settings: skipped
    pipe.run("copy", "json.tool", [str(src), str(out)], str(out.parent), {"n": 2})
    assert out.exists()  # changed settings: run again
    with pytest.raises(quickstart.QuickstartError, match="stage 'bad' failed"):
        pipe.run("bad", "json.tool", [str(tmp_path / "missing.json")])
    pipe.finish()
    first = json.loads((tmp_path / "timings.json").read_text())
    assert set(first) == {"copy", "total"}
    rerun = quickstart.Pipeline(str(tmp_path), stages=1)
    rerun.run("copy", "json.tool", [str(src), str(out)], str(out.parent), {"n": 2})  # skipped
    rerun.finish()
    again = json.loads((tmp_path / "timings.json").read_text())
    assert set(again) == {"copy", "total"} and again["copy"] == first["copy"]
    assert rerun.timings["total"] == again["total"]  # the pipeline prints it at the end


def test_a_stage_that_exits_without_writing_its_result_is_not_marked_done(tmp_path):
    src, folder = tmp_path / "in.json", tmp_path / "row"
    src.write_text('{"a": 1}')
    folder.mkdir()
    (folder / "out.json").write_text('{"old": 1}')  # left by an earlier, different run
    pipe = quickstart.Pipeline(str(tmp_path), stages=2)
    with pytest.raises(quickstart.QuickstartError, match="'silent' exited before finishing"):
        pipe.run("silent", "json.tool", [str(src)], str(folder), {"n": 1}, writes="out.json")
    assert not (folder / quickstart.DONE).exists()
    pipe.run("writes", "json.tool", [str(src), str(folder / "out.json")], str(folder), {"n": 1},
             writes="out.json")
    assert (folder / quickstart.DONE).exists()


@pytest.mark.slow
def test_a_training_stage_stopped_by_sigterm_resumes_on_the_next_run(data_dir, tmp_path,
                                                                      monkeypatch):
    """The real trainer (gin/runs/smoke.gin, tiny T5 on the WMT22 pool) saves and exits 0 on
    SIGTERM; the pipeline must stop there, and its next run must finish the same row."""
    import signal
    import threading
    import time

    import psutil

    monkeypatch.setenv("LMCOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    model_dir = tmp_path / "lmcor"
    args = ["--gin_file=runs/smoke.gin", f"--gin.MODEL_DIR={str(model_dir)!r}",
            "--gin.TRAIN_STEPS=400", "--gin.EVAL_EVERY=0", "--gin.Checkpointer.save_every=2"]

    def stop_after_first_checkpoint():
        deadline = time.time() + 600
        while time.time() < deadline:
            saved = [n for n in os.listdir(model_dir / "checkpoints") if n.isdigit()] \
                if (model_dir / "checkpoints").is_dir() else []
            children = psutil.Process().children()
            if saved and children:
                children[0].send_signal(signal.SIGTERM)
                return
            time.sleep(0.05)

    stopper = threading.Thread(target=stop_after_first_checkpoint)
    stopper.start()
    pipe = quickstart.Pipeline(str(tmp_path), stages=2)
    with pytest.raises(quickstart.QuickstartError, match="exited before finishing"):
        pipe.run("train lmcor", "lmcor.train", args, str(model_dir), {"n": 1},
                 writes=quickstart.TRAIN_SUMMARY)
    stopper.join()
    assert not (model_dir / quickstart.DONE).exists()
    stopped_at = max(int(n) for n in os.listdir(model_dir / "checkpoints") if n.isdigit())
    assert stopped_at < 400
    args[2] = f"--gin.TRAIN_STEPS={stopped_at + 2}"  # the resumed run only has to finish
    pipe.run("train lmcor", "lmcor.train", args, str(model_dir), {"n": 1},
             writes=quickstart.TRAIN_SUMMARY)
    summary = json.loads((model_dir / quickstart.TRAIN_SUMMARY).read_text())
    assert summary["step"] == stopped_at + 2 and (model_dir / quickstart.DONE).exists()


def test_the_quickstart_samples_the_test_slice_and_evaluates_the_released_corrector(tmp_path,
                                                                                     monkeypatch):
    """README command (a) trains nothing: it samples fresh pools for the test slice only and
    the table's LMCor row is the released E2E adapter, found from the repository root whatever
    the current directory."""
    import gin

    from lmcor import config as gin_config
    from lmcor.checkpoints import adapter

    stages = []

    def record(pipe, name, module, args, folder=None, settings=None, writes=None):
        stages.append((module, list(args)))
        if module == "lmcor.evaluate":
            raise _Planned

    monkeypatch.setattr(quickstart.Pipeline, "run", record)
    monkeypatch.chdir(tmp_path)
    try:
        gin_config.parse_gin(["runs/quickstart.gin"], [f"RUN_DIR = {str(tmp_path)!r}",
                                                       "QUICKSTART_TEST_EXAMPLES = 5"],
                             finalize=False)
        with pytest.raises(_Planned):
            quickstart.quickstart()
    finally:
        gin.clear_config()
    assert [module for module, _ in stages] == ["lmcor.sample", "lmcor.evaluate"]
    sample, evaluate = (args for _, args in stages)
    assert "--gin.sample_pool.split='test'" in sample
    assert "--gin.sample_pool.max_examples=5" in sample
    assert "--gin.sample_pool.subset_seed=0" in sample  # a random slice, not the first MRs
    released = os.path.join(gin_config.REPO_ROOT, "data", "correctors", "e2e")
    assert f"--gin.LMCOR_DIR={released!r}" in evaluate
    assert not any(a.startswith(("--gin.FINETUNE_DIR", "--gin.LMCOR_SINGLE_DIR"))
                   for a in evaluate)
    for name in (adapter.WEIGHTS, adapter.MANIFEST):
        assert os.path.isfile(os.path.join(released, name)), name


class _Planned(Exception):
    """Raised at the stage after the ones a test inspects."""


def test_built_flags_parse_with_the_real_gin_files(tmp_path):
    import gin

    from lmcor import config as gin_config
    from lmcor.tasks.common import pool_overrides

    pools = {"dev": "/p/dev", "test": "/p/test"}
    args = quickstart._train_args("e2e", "finetune", str(tmp_path / "m"), pools, 7,
                                  ["--gin_file=models/t5_1_1_tiny.gin",
                                   "--gin_file=runs/train_corrector.gin"])
    files, bindings, rest = gin_config.split_gin_flags(args)
    assert not rest
    try:
        gin_config.parse_gin(files, bindings, finalize=False)
        assert gin.query_parameter("%TRAIN_STEPS") == 7
        # The row's variant wins over the task file's default (e2e_lmcor).
        assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "e2e_finetune"
        assert pool_overrides() == {"e2e": pools}
    finally:
        gin.clear_config()


@pytest.mark.parametrize("run_file", ["runs/quickstart_train.gin", "runs/tables/e2e.gin",
                                      "runs/tables/jfleg.gin", "runs/tables/wmt.gin"])
def test_pipeline_configs_build_flags_that_parse(run_file, tmp_path):
    """Every row of the quickstart and of the README tables trains the Gemma recipe on its own
    task variant, with the pools the config names."""
    import gin

    from lmcor import config as gin_config

    try:
        gin_config.parse_gin([run_file], [], finalize=False)
        task = gin.query_parameter("quickstart.task")
        rows = gin.query_parameter("quickstart.rows")
        flags = gin.query_parameter("quickstart.train_flags")
        bound = gin.get_bindings("quickstart")
        variants = bound.get("test_variants") or {}
        sampled = {"dev": "/p/dev", "test": "/p/test"}
        pools = bound.get("pools") or ({} if bound.get("sample") is False else sampled)
    finally:
        gin.clear_config()
    assert "lmcor" in rows and "finetune" in rows
    for row in rows:
        args = quickstart._train_args(task, row, str(tmp_path / row), pools, 3, flags)
        files, bindings, rest = gin_config.split_gin_flags(args)
        assert not rest
        try:
            gin_config.parse_gin(files, bindings, finalize=False)
            assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == f"{task}_{row}"
            assert gin.query_parameter("gemma_model.gguf") == "bundled"
            assert ("pool_overrides.by_dataset" in " ".join(bindings)) == bool(pools)
        finally:
            gin.clear_config()
    # A whole-test-set variant lifts the table's limit on test inputs.
    for name, extra in variants.items():
        table = ["--gin_file=runs/evaluate.gin", f"--gin_file=tasks/{task}.gin",
                 "--gin.EVAL_MAX_EXAMPLES=200"]
        args = quickstart._eval_args(table, str(tmp_path / name),
                                     {"lmcor": str(tmp_path / "lmcor")}, extra)
        files, bindings, _ = gin_config.split_gin_flags(args)
        try:
            gin_config.parse_gin(files, bindings, finalize=False)
            assert gin.query_parameter("%EVAL_MAX_EXAMPLES") == (None if name == "full_test"
                                                                 else 200)
        finally:
            gin.clear_config()


def test_ablation_flags_parse_and_reach_train_and_evaluate(tmp_path):
    """Each ablation of the README's E2E ablation config trains the `lmcor` variant with its
    own setting, and its evaluation carries the tag the report groups by, its own output folder
    and corrector, and its overrides (the prompt-B test pool) over the table's."""
    import gin

    from lmcor import config as gin_config
    from lmcor.data.corrector_input import corrector_options

    try:
        gin_config.parse_gin(["runs/tables/e2e_ablations.gin"], [], finalize=False)
        flags = gin.query_parameter("quickstart.train_flags")
        ablations = gin.query_parameter("quickstart.ablations")
        train_only = gin.query_parameter("quickstart.ablation_train_flags")
        test_variants = gin.query_parameter("quickstart.test_variants")
    finally:
        gin.clear_config()
    assert {"k1", "k4", "order_shuffled"} <= set(ablations)
    pools = {"dev": "/p/dev", "test": "/p/test"}
    for name, extra in ablations.items():
        args = quickstart._train_args("e2e", "lmcor", str(tmp_path / name), pools, 3, flags,
                                      [*extra, *train_only])
        files, bindings, rest = gin_config.split_gin_flags(args)
        assert not rest
        try:
            gin_config.parse_gin(files, bindings, finalize=False)
            assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "e2e_lmcor"
            assert gin.query_parameter("Checkpointer.keep") == 1
            opts = corrector_options()
            assert (opts.k, opts.order) == ((int(name[1]), "fixed") if name[0] == "k"
                                            else (5, "shuffled"))
        finally:
            gin.clear_config()
    common = ["--gin_file=runs/evaluate.gin", "--gin_file=tasks/e2e.gin",
              "--gin.EVAL_POOL='/p/test'", "--gin.EVAL_MAX_EXAMPLES=200"]
    eval_args = {name: quickstart._eval_args(common, str(tmp_path / name / "eval"),
                                             {"lmcor": str(tmp_path / "m")}, extra)
                 for name, extra in {**ablations, **test_variants}.items()}
    # `lmcor evaluate` registers fewer configurables than this test process has imported by
    # now (the trainer's, above): parse its flags where only its own imports exist.
    (tmp_path / "args.json").write_text(json.dumps(list(eval_args.values())))
    check = ("import json, sys, gin, lmcor.evaluate\n"
             "from lmcor import config\n"
             "for args in json.load(open(sys.argv[1])):\n"
             "    files, bindings, _ = config.split_gin_flags(args)\n"
             "    config.parse_gin(files, bindings, finalize=False)\n"
             "    gin.clear_config()\n")
    done = subprocess.run([sys.executable, "-P", "-c", check, str(tmp_path / "args.json")],
                          cwd=gin_config.REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    for name, args in eval_args.items():
        files, bindings, _ = gin_config.split_gin_flags(args)
        try:
            gin_config.parse_gin(files, bindings, finalize=False)
            assert gin.query_parameter("%EVAL_DIR") == str(tmp_path / name / "eval")
            assert gin.query_parameter("%LMCOR_DIR") == str(tmp_path / "m")
            assert "ablation" in gin.query_parameter("%EVAL_TAGS")
            pool = gin.query_parameter("%EVAL_POOL")
            assert pool == ("data/pools/e2e_test_e2e_mr.jsonl.gz" if name == "prompt_A_to_B"
                            else "/p/test")
        finally:
            gin.clear_config()


def test_bad_ablation_settings_fail_before_any_stage(tmp_path):
    with pytest.raises(ValueError, match="add 'lmcor' to quickstart.rows"):
        quickstart.quickstart(run_dir=str(tmp_path), rows=["finetune"],
                              test_variants={"k5": []})
    with pytest.raises(ValueError, match=r"\['k5'\] named in both"):
        quickstart.quickstart(run_dir=str(tmp_path), ablations={"k5": []},
                              test_variants={"k5": []})
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="'whole' is not a test variant"):
        quickstart.quickstart(run_dir=str(tmp_path), test_variants={"k5": []},
                              test_variant_rows={"whole": ["lmcor"]})
    with pytest.raises(ValueError, match="must be some of the table's rows"):
        quickstart.quickstart(run_dir=str(tmp_path), rows=["finetune", "lmcor"],
                              test_variants={"whole": []},
                              test_variant_rows={"whole": ["lmcor_single"]})
    assert not any(tmp_path.iterdir())


class _Planned(Exception):
    """Raised by the stage recorder below at the report stage: every earlier stage is planned."""


def _query(args, names):
    """{name: value} that the Gin files and bindings in a stage's `args` give each name."""
    import gin

    from lmcor import config as gin_config

    files, bindings, _ = gin_config.split_gin_flags(args)
    try:
        gin_config.parse_gin(files, bindings, finalize=False)
        return {name: gin.query_parameter(name) for name in names}
    finally:
        gin.clear_config()


def _record_stages(monkeypatch) -> list:
    """Replaces running a stage by recording (name, module, args); stops at the report."""
    stages = []

    def record(pipe, name, module, args, folder=None, settings=None, writes=None):
        if module == "lmcor.report":
            raise _Planned
        stages.append((name, module, list(args)))

    monkeypatch.setattr(quickstart.Pipeline, "run", record)
    return stages


def test_test_variants_evaluate_the_rows_they_name(tmp_path, monkeypatch):
    """A test variant decodes the table's own correctors: the `lmcor` row's by default, or each
    row named in `test_variant_rows` (the whole-test-set table); an ablation, its own."""
    stages = _record_stages(monkeypatch)
    pools = {"dev": str(tmp_path / "dev"), "test": str(tmp_path / "test")}
    with pytest.raises(_Planned):
        quickstart.quickstart(run_dir=str(tmp_path / "run"), pools=pools,
                              rows=["finetune", "lmcor_single", "lmcor"],
                              ablations={"k2": ["--gin.X=2"]},
                              test_variants={"full": ["--gin.EVAL_MAX_EXAMPLES=None"],
                                             "k5": []},
                              test_variant_rows={"full": ["finetune", "lmcor"]})
    evaluated = {name: {a.split("=")[0][len("--gin."):]: a.split("=", 1)[1] for a in args
                        if a.split("=")[0][len("--gin."):] in quickstart.EVAL_MACROS.values()}
                 for name, _, args in stages if name.endswith("evaluate")}
    run = tmp_path / "run"
    assert evaluated["variant full: evaluate"] == {"FINETUNE_DIR": repr(str(run / "finetune")),
                                                   "LMCOR_DIR": repr(str(run / "lmcor"))}
    assert evaluated["variant k5: evaluate"] == {"LMCOR_DIR": repr(str(run / "lmcor"))}
    assert evaluated["variant k2: evaluate"] == {
        "LMCOR_DIR": repr(str(run / "variants" / "k2" / "lmcor"))}
    assert len(evaluated["evaluate"]) == 3


def test_a_budget_reaches_every_training_run_and_bad_keys_are_refused(tmp_path):
    budget = {"examples": 1200, "eval_every_examples": 300, "patience": 3}
    args = quickstart._train_args("e2e", "lmcor", str(tmp_path / "m"), {}, 100,
                                  ["--gin_file=models/t5_1_1_tiny.gin",
                                   "--gin_file=runs/train_corrector.gin",
                                   *quickstart.budget_flags(budget)])
    assert _query(args, ["train.train_examples", "train.eval_every_examples",
                         "train.patience"]) == {"train.train_examples": 1200,
                                                "train.eval_every_examples": 300,
                                                "train.patience": 3}
    assert quickstart.budget_flags({"epochs": 2.5}) == ["--gin.train.train_epochs=2.5"]
    with pytest.raises(ValueError, match="steps"):
        quickstart.budget_flags({"steps": 3})


def test_a_released_corrector_is_evaluated_without_training_or_dev_sampling(tmp_path,
                                                                            monkeypatch):
    stages = _record_stages(monkeypatch)
    released = tmp_path / "released"
    released.mkdir()
    with pytest.raises(_Planned):
        quickstart.quickstart(run_dir=str(tmp_path / "run"), rows=[],
                              correctors={"lmcor": str(released)}, test_examples=5)
    assert [module for _, module, _ in stages] == ["lmcor.sample", "lmcor.evaluate"]
    assert "--gin.sample_pool.split='test'" in stages[0][2]
    assert f"--gin.LMCOR_DIR={str(released)!r}" in stages[1][2]
    with pytest.raises(ValueError, match="not a folder"):
        quickstart.quickstart(run_dir=str(tmp_path / "run"), rows=[],
                              correctors={"lmcor": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="does not also train"):
        quickstart.quickstart(run_dir=str(tmp_path / "run"), rows=["lmcor"],
                              correctors={"lmcor": str(released)})


@pytest.mark.parametrize("table", ["e2e", "jfleg", "wmt"])
def test_the_gpu_scale_file_rescales_every_training_run_of_a_table(table, tmp_path, monkeypatch):
    import gin

    from lmcor import config as gin_config

    stages = _record_stages(monkeypatch)
    dev = "data/pools/e2e_dev_e2e_attributes.jsonl.gz"  # a pool that exists; not read here
    pools = [] if table == "wmt" else [f"quickstart.pools = {{'dev': {dev!r}, 'test': {dev!r}}}"]
    try:
        gin_config.parse_gin([f"runs/tables/{table}.gin", "runs/gpu_scale.gin"],
                             [f"RUN_DIR = {str(tmp_path)!r}", *pools], finalize=False)
        with pytest.raises(_Planned):
            quickstart.quickstart()
    finally:
        gin.clear_config()
    trains = [args for _, module, args in stages if module == "lmcor.train"]
    assert len(trains) == 2  # the fine-tuned and LMCor rows
    for args in trains:
        assert _query(args, ["%BATCH_SIZE", "train.train_examples", "%TRAIN_STEPS"]) == {
            "%BATCH_SIZE": 128, "train.train_examples": 256000, "%TRAIN_STEPS": 2000}
    evaluations = [args for _, module, args in stages if module == "lmcor.evaluate"]
    assert evaluations and all("--gin.evaluation.batch_size=128" in e for e in evaluations)
