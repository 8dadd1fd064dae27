"""Every run file parses with its model and task files, and the T5X macros land where the
trainer reads them (a typo in a binding would otherwise surface only after data loading)."""
import gin
import pytest

from lmcor.cli import gin_flags
import lmcor.cli.train_command  # noqa: F401  (registers the trainer's configurables)


def _resolve(value):
    """Follows macro references (`%NAME`) to the value they finally stand for."""
    while isinstance(value, gin.config.ConfigurableReference) and value.configurable.name == "macro":
        value = gin.query_parameter("%" + value.scopes[-1])
    return value


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize("files,task,model", [
    (["runs/smoke.gin"], "wmt22_lmcor", "t5_model"),
    (["models/t5_1_1_base.gin", "runs/train_corrector.gin", "tasks/wmt.gin"], "wmt_lmcor",
     "t5_model"),
    (["models/t5_1_1_small.gin", "runs/finetune_baseline.gin", "tasks/e2e.gin"], "e2e_finetune",
     "t5_model"),
    (["runs/gemma_corrector.gin", "tasks/jfleg.gin"], "jfleg_lmcor", "gemma_model"),
    (["models/t5_1_1_base.gin", "runs/eval_only.gin", "tasks/wmt.gin"], "wmt_lmcor", "t5_model"),
])
def test_run_files_parse_and_bind_the_trainer(files, task, model):
    # Finalized as the CLI does, so a macro left unbound (a run file that needs a model file it
    # does not include) fails here rather than after the data has loaded.
    gin_flags.parse_gin(files, ["MODEL_DIR = '/tmp/unused'"])
    assert _resolve(gin.query_parameter("seqio_train_data.task")) == task
    assert _resolve(gin.query_parameter("Evaluator.task")) == task
    assert gin.query_parameter("train.model").configurable.name == model
    assert _resolve(gin.query_parameter("train.model_dir")) == "/tmp/unused"
    best = _resolve(gin.query_parameter("Checkpointer.best_metric"))
    assert best in ("bleu", "chrf", "gleu", "rougeLsum")


def test_the_train_command_takes_a_bare_model_dir(tmp_path, monkeypatch):
    """`--gin.MODEL_DIR=runs/x` (no inner quotes) reaches the trainer as a path: it writes the
    run's config.gin there, then stops at a mesh this machine cannot build."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.gin").write_text("train.model_dir = %MODEL_DIR\ntrain.train_steps = 1\n"
                                      "train.model = None\ntrain.data = None\n"
                                      "train.mesh_shape = (999, 1)\n")
    with pytest.raises(ValueError, match="mesh 999x1 needs 999 devices"):
        lmcor.cli.train_command.main(["--gin_file=run.gin", "--gin.MODEL_DIR=runs/x"])
    assert "'runs/x'" in (tmp_path / "runs" / "x" / "config.gin").read_text()
