"""Pipeline mechanics: stages run as processes, finished stages are skipped on rerun, changed
settings rerun them, a failing stage stops the pipeline naming itself; which stages a pipeline
plans (test variants, released correctors). Its flags against the Gin files:
test_pipeline_flags.py."""
import json
import os

import pytest

from lmcor import paths
from lmcor.data.corrector_input import ROW_NAMES
from lmcor.pipeline import table
from lmcor.pipeline.stages import DONE, StageError, Stages

from _pipeline_stages import Planned, record_stages


def test_stages_resume_from_done_markers(tmp_path):
    src, out = tmp_path / "in.json", tmp_path / "stage" / "out.json"
    src.write_text('{"a": 1}')
    out.parent.mkdir()
    pipe = Stages(str(tmp_path), stages=3)
    pipe.run("copy", "json.tool", [str(src), str(out)], str(out.parent), {"n": 1})
    assert json.loads(out.read_text()) == {"a": 1}
    out.unlink()
    pipe.run("copy", "json.tool", [str(src), str(out)], str(out.parent), {"n": 1})
    assert not out.exists()  # same settings: skipped
    pipe.run("copy", "json.tool", [str(src), str(out)], str(out.parent), {"n": 2})
    assert out.exists()  # changed settings: run again
    with pytest.raises(StageError, match="stage 'bad' failed"):
        pipe.run("bad", "json.tool", [str(tmp_path / "missing.json")])
    pipe.finish()
    first = json.loads((tmp_path / "timings.json").read_text())
    assert set(first) == {"copy", "total"}
    rerun = Stages(str(tmp_path), stages=1)
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
    pipe = Stages(str(tmp_path), stages=2)
    with pytest.raises(StageError, match="'silent' exited before finishing"):
        pipe.run("silent", "json.tool", [str(src)], str(folder), {"n": 1}, writes="out.json")
    assert not (folder / DONE).exists()
    pipe.run("writes", "json.tool", [str(src), str(folder / "out.json")], str(folder), {"n": 1},
             writes="out.json")
    assert (folder / DONE).exists()


# `lmcor train` on the tiny T5 and the synthetic task of tests/_train_worker.py: what a stage
# does when its trainer is stopped does not depend on the data, which would cost each process
# TensorFlow, SeqIO and a real pool to prepare. Its slow evaluation every 2 steps keeps the run
# going until the SIGTERM arrives.
TINY_RUN_GIN = """import _train_worker
train.model = @t5_model()
t5_model.preset = "tiny"
train.data = @reverse_task
train.batch_size = 8
train.evaluator = @slow_eval
train.eval_every = 2
train.model_dir = %MODEL_DIR
train.train_steps = %TRAIN_STEPS
make_schedule.name = "constant"
make_schedule.learning_rate = 0.01
MODEL_DIR = %gin.REQUIRED
TRAIN_STEPS = 10
"""


@pytest.mark.slow
def test_a_training_stage_stopped_by_sigterm_resumes_on_the_next_run(tmp_path, monkeypatch):
    """The real trainer (`lmcor train`, tiny T5) saves and exits 0 on SIGTERM; the pipeline
    must stop there, and its next run must finish the same row."""
    import signal
    import threading
    import time

    import psutil

    tests = os.path.dirname(os.path.abspath(__file__))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    (tmp_path / "tiny.gin").write_text(TINY_RUN_GIN)
    model_dir = tmp_path / "lmcor"
    args = [f"--gin_file={tmp_path / 'tiny.gin'}", f"--gin.MODEL_DIR={str(model_dir)!r}",
            "--gin.TRAIN_STEPS=400", "--gin.Checkpointer.save_every=2"]

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
    pipe = Stages(str(tmp_path), stages=2)
    with pytest.raises(StageError, match="exited before finishing"):
        pipe.command("train lmcor", "train", args, str(model_dir), {"n": 1},
                     writes=paths.TRAIN_SUMMARY)
    stopper.join()
    assert not (model_dir / DONE).exists()
    stopped_at = max(int(n) for n in os.listdir(model_dir / "checkpoints") if n.isdigit())
    assert stopped_at < 400
    args[2] = f"--gin.TRAIN_STEPS={stopped_at + 2}"  # the resumed run only has to finish
    pipe.command("train lmcor", "train", args, str(model_dir), {"n": 1},
                 writes=paths.TRAIN_SUMMARY)
    summary = json.loads((model_dir / paths.TRAIN_SUMMARY).read_text())
    assert summary["step"] == stopped_at + 2 and (model_dir / DONE).exists()


def test_the_quickstart_samples_the_test_slice_and_evaluates_the_released_corrector(tmp_path,
                                                                                     monkeypatch):
    """README command (a) trains nothing: it samples fresh pools for the test slice only and
    the table's LMCor row is the released E2E adapter, found from the repository root whatever
    the current directory."""
    import gin

    from lmcor.cli import gin_flags
    from lmcor.checkpoints import released_adapter

    stages = []

    def record(pipe, name, module, args, folder=None, settings=None, writes=None):
        assert module == "lmcor.cli", (name, module)
        stages.append((args[0], list(args[1:])))
        if args[0] == "evaluate":
            raise Planned

    monkeypatch.setattr(Stages, "run", record)
    monkeypatch.chdir(tmp_path)
    try:
        gin_flags.parse_gin(["runs/quickstart.gin"], [f"RUN_DIR = {str(tmp_path)!r}",
                                                       "QUICKSTART_TEST_EXAMPLES = 5"],
                             finalize=False)
        with pytest.raises(Planned):
            table.pipeline()
    finally:
        gin.clear_config()
    assert [command for command, _ in stages] == ["sample", "evaluate"]
    sample, evaluate = (args for _, args in stages)
    assert "--gin.sample_pool.split='test'" in sample
    assert "--gin.sample_pool.max_examples=5" in sample
    assert "--gin.sample_pool.subset_seed=0" in sample  # a random slice, not the first MRs
    released = os.path.join(paths.REPO_ROOT, "data", "correctors", "e2e")
    assert f"--gin.LMCOR_DIR={released!r}" in evaluate
    assert not any(a.startswith(("--gin.FINETUNE_DIR", "--gin.LMCOR_SINGLE_DIR"))
                   for a in evaluate)
    for name in (released_adapter.WEIGHTS, released_adapter.MANIFEST):
        assert os.path.isfile(os.path.join(released, name)), name


def test_bad_ablation_settings_fail_before_any_stage(tmp_path):
    with pytest.raises(ValueError, match="add 'lmcor' to pipeline.rows"):
        table.pipeline(run_dir=str(tmp_path), rows=["finetune"],
                              test_variants={"k5": []})
    with pytest.raises(ValueError, match=r"\['k5'\] named in both"):
        table.pipeline(run_dir=str(tmp_path), ablations={"k5": []},
                              test_variants={"k5": []})
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="'whole' is not a test variant"):
        table.pipeline(run_dir=str(tmp_path), test_variants={"k5": []},
                              test_variant_rows={"whole": ["lmcor"]})
    with pytest.raises(ValueError, match="must be some of the table's rows"):
        table.pipeline(run_dir=str(tmp_path), rows=["finetune", "lmcor"],
                              test_variants={"whole": []},
                              test_variant_rows={"whole": ["lmcor_single"]})
    assert not any(tmp_path.iterdir())


def test_test_variants_evaluate_the_rows_they_name(tmp_path, monkeypatch):
    """A test variant decodes the table's own correctors: the `lmcor` row's by default, or each
    row named in `test_variant_rows` (the whole-test-set table); an ablation, its own."""
    stages = record_stages(monkeypatch)
    pools = {"dev": str(tmp_path / "dev"), "test": str(tmp_path / "test")}
    with pytest.raises(Planned):
        table.pipeline(run_dir=str(tmp_path / "run"), pools=pools,
                              rows=["finetune", "lmcor_single", "lmcor"],
                              ablations={"k2": ["--gin.X=2"]},
                              test_variants={"full": ["--gin.EVAL_MAX_EXAMPLES=None"],
                                             "k5": []},
                              test_variant_rows={"full": ["finetune", "lmcor"]})
    macros = [table.eval_macro(row) for row in ROW_NAMES]
    evaluated = {name: {a.split("=")[0][len("--gin."):]: a.split("=", 1)[1] for a in args
                        if a.split("=")[0][len("--gin."):] in macros}
                 for name, _, args in stages if name.endswith("evaluate")}
    run = tmp_path / "run"
    assert evaluated["variant full: evaluate"] == {"FINETUNE_DIR": repr(str(run / "finetune")),
                                                   "LMCOR_DIR": repr(str(run / "lmcor"))}
    assert evaluated["variant k5: evaluate"] == {"LMCOR_DIR": repr(str(run / "lmcor"))}
    assert evaluated["variant k2: evaluate"] == {
        "LMCOR_DIR": repr(str(run / "variants" / "k2" / "lmcor"))}
    assert len(evaluated["evaluate"]) == 3


def test_a_released_corrector_is_evaluated_without_training_or_dev_sampling(tmp_path,
                                                                            monkeypatch):
    stages = record_stages(monkeypatch)
    released = tmp_path / "released"
    released.mkdir()
    with pytest.raises(Planned):
        table.pipeline(run_dir=str(tmp_path / "run"), rows=[],
                              correctors={"lmcor": str(released)}, test_examples=5)
    assert [command for _, command, _ in stages] == ["sample", "evaluate"]
    assert "--gin.sample_pool.split='test'" in stages[0][2]
    assert f"--gin.LMCOR_DIR={str(released)!r}" in stages[1][2]
    with pytest.raises(ValueError, match="not a folder"):
        table.pipeline(run_dir=str(tmp_path / "run"), rows=[],
                              correctors={"lmcor": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="does not also train"):
        table.pipeline(run_dir=str(tmp_path / "run"), rows=["lmcor"],
                              correctors={"lmcor": str(released)})
    # Trained rows beside a released `lmcor`: a test variant decodes the released one.
    stages.clear()
    with pytest.raises(Planned):
        table.pipeline(run_dir=str(tmp_path / "run2"), rows=["finetune"],
                       pools={"dev": str(tmp_path), "test": str(tmp_path)},
                       correctors={"lmcor": str(released)}, test_variants={"k1": []})
    variant = next(args for name, _, args in stages if name == "variant k1: evaluate")
    assert f"--gin.LMCOR_DIR={str(released)!r}" in variant
    assert not any(a.startswith("--gin.FINETUNE_DIR") for a in variant)
