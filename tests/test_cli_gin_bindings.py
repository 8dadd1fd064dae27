"""Command-line Gin bindings, each mistake one line (exit status 2) before any work: a macro
nothing reads (with the closest one that is read), an unknown configurable or parameter (with the
closest known one), a value left at %gin.REQUIRED, and the flags every pipeline stage gets."""
import os
import re

import gin
import pytest

from lmcor import cli
from lmcor.cli import gin_flags
from lmcor.cli.gin_errors import GinError

from _cli import one_line_error


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


# ---------------------------------------------------------------------- bindings nothing reads
# Each gin file below ends in a tripwire: a run that got past the flags fails on it at once (a
# ValueError), so a command that ignored the typo cannot start real work here.


def _gin(tmp_path, text: str) -> str:
    path = tmp_path / "cmd.gin"
    path.write_text(text)
    return str(path)


SAMPLE_GIN = ("sample_pool.output_dir = %OUTPUT_DIR\nsample_pool.task = 'e2e'\n"
              "sample_pool.split = 'test'\nsample_pool.demo_split = 'dev'\n"
              "sample_pool.backend = None\nsample_pool.shard_size = 0\n")
EVALUATE_GIN = ("evaluation.task = 'e2e_lmcor'\nevaluation.out_dir = %EVAL_DIR\n"
                "evaluation.mbr_utility = 'tripwire'\n")
PIPELINE_GIN = ("pipeline.run_dir = %RUN_DIR\npipeline.rows = ['finetune']\n"
                  "pipeline.correctors = {'lmcor': 'no/such/tripwire'}\n")


@pytest.mark.parametrize("command, text, macro, typo", [
    ("sample", SAMPLE_GIN, "OUTPUT_DIR", "OUTPUT_DIRR"),
    ("evaluate", EVALUATE_GIN, "EVAL_DIR", "EVAL_DRI"),
    ("quickstart", PIPELINE_GIN, "RUN_DIR", "RUNDIR"),
    ("pipeline", PIPELINE_GIN, "RUN_DIR", "RUN_DIRS"),
])
def test_a_macro_no_gin_file_reads_is_an_error_naming_the_closest(command, text, macro, typo,
                                                                   tmp_path, capsys):
    argv = [command, f"--gin_file={_gin(tmp_path, text)}", f"--gin.{macro}={tmp_path}/out",
            f"--gin.{typo}={tmp_path}/typo"]
    assert cli.main(argv) == 2
    msg = one_line_error(capsys.readouterr().err, command)
    print(msg)
    assert f"--gin.{typo}={tmp_path}/typo" in msg and f"did you mean {macro}?" in msg
    assert not any(tmp_path.glob("out*")) and not any(tmp_path.glob("typo*"))


def test_a_macro_only_an_included_file_or_another_binding_reads_is_used(tmp_path):
    inner = tmp_path / "inner.gin"
    inner.write_text("sample_pool.seed = %SEED\n")
    outer = _gin(tmp_path, f"include '{inner}'\n")
    import lmcor.sampling.job  # noqa: F401  (registers sample_pool)

    with gin_flags.command_line():
        gin_flags.parse_gin([outer], ["SEED = 3", "N = 5", "sample_pool.shard_size = %N"],
                             finalize=False)
    assert gin.query_parameter("%SEED") == 3 and gin.query_parameter("%N") == 5
    gin.clear_config()
    with gin_flags.command_line(), pytest.raises(GinError, match=r"nothing reads the macro SEEDS"):
        gin_flags.parse_gin([outer], ["SEEDS = 3"], finalize=False)
    gin.clear_config()
    # Library callers (tests, notebooks) may bind macros for files they do not parse.
    gin_flags.parse_gin([outer], ["SEEDS = 3"], finalize=False)
    assert gin.query_parameter("%SEEDS") == 3


def test_a_far_off_macro_lists_the_macros_the_files_read(tmp_path, capsys):
    argv = ["sample", f"--gin_file={_gin(tmp_path, SAMPLE_GIN)}", "--gin.ZZZ=1"]
    assert cli.main(argv) == 2
    msg = one_line_error(capsys.readouterr().err, "sample")
    assert "nothing reads the macro ZZZ" in msg and "OUTPUT_DIR" in msg


@pytest.mark.parametrize("binding, want", [
    ("sample_pool.shard_sise=3", "did you mean shard_size?"),
    ("sample_pol.shard_size=3", "did you mean sample_pool?"),
    ("sample_pool.prompt=@PromptConfg()", "did you mean PromptConfig?"),
])
def test_unknown_configurables_and_parameters_suggest_the_closest(binding, want, tmp_path,
                                                                  capsys):
    argv = ["sample", f"--gin_file={_gin(tmp_path, SAMPLE_GIN)}", f"--gin.OUTPUT_DIR={tmp_path}",
            f"--gin.{binding}"]
    assert cli.main(argv) == 2
    msg = one_line_error(capsys.readouterr().err, "sample")
    print(msg)
    assert msg.startswith(f"bad gin binding --gin.{binding}: ") and want in msg


def test_an_unknown_configurable_in_a_file_is_one_line_with_its_line(tmp_path, capsys):
    gin_file = _gin(tmp_path, SAMPLE_GIN + "PromptConfig.num_shot = 3\n")
    assert cli.main(["sample", f"--gin_file={gin_file}", f"--gin.OUTPUT_DIR={tmp_path}"]) == 2
    msg = one_line_error(capsys.readouterr().err, "sample")
    print(msg)
    assert msg.startswith(f"bad gin file {gin_file}: ")
    assert "num_shot" in msg and "did you mean num_shots?" in msg and "line 7" in msg


def test_an_unbound_required_macro_is_one_line_naming_the_flag(tmp_path, capsys):
    gin_file = _gin(tmp_path, "EVAL_DIR = %gin.REQUIRED\n" + EVALUATE_GIN)
    assert cli.main(["evaluate", f"--gin_file={gin_file}"]) == 2
    msg = one_line_error(capsys.readouterr().err, "evaluate")
    print(msg)
    assert "EVAL_DIR" in msg and "--gin.EVAL_DIR=" in msg


def test_required_bindings_are_one_line_once_parsed_and_when_called(tmp_path):
    """What the flag checks cannot see (an include they do not find, a REQUIRED parameter with
    no binding at all) is reported by parse_gin or at the call, as the same one line."""
    from lmcor.evaluation import evaluate

    gin_file = _gin(tmp_path, "EVAL_DIR = %gin.REQUIRED\n" + EVALUATE_GIN)
    with gin_flags.command_line(), pytest.raises(GinError) as err:
        gin_flags.parse_gin([gin_file], [], finalize=False)
    assert str(err.value) == ("EVAL_DIR is required (a Gin file sets it to %gin.REQUIRED); "
                              "add --gin.EVAL_DIR=VALUE")
    gin.clear_config()
    gin_flags.parse_gin([], ["evaluation.out_dir = 'x'"], finalize=False)
    with pytest.raises(GinError) as err, gin_flags.command_line():
        evaluate.evaluation()
    assert str(err.value) == "evaluation.task is required; add --gin.evaluation.task=VALUE"
    with pytest.raises(RuntimeError, match="Required bindings for `evaluation`"):
        evaluate.evaluation()  # outside a command, gin's own error is left as it is


# ---------------------------------------------------------------------- train and export
# These parse the real run files, which import the trainer (JAX, TensorFlow, SeqIO).


def _tripwired_smoke(tmp_path) -> str:
    """runs/smoke.gin with a mesh no machine here has: a run that reaches the trainer stops."""
    return _gin(tmp_path, "include 'runs/smoke.gin'\ntrain.mesh_shape = (999, 1)\n")


def test_train_rejects_a_misspelled_macro_before_writing_anything(tmp_path, capsys):
    model_dir = tmp_path / "typo"
    assert cli.main(["train", f"--gin_file={_tripwired_smoke(tmp_path)}", "--gin.TRAIN_STEPZ=3",
                     f"--gin.MODEL_DIR={model_dir}"]) == 2
    msg = one_line_error(capsys.readouterr().err, "train")
    print(msg)
    assert msg.startswith("--gin.TRAIN_STEPZ=3: nothing reads the macro TRAIN_STEPZ")
    assert "did you mean TRAIN_STEPS?" in msg
    assert not model_dir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("flags, want", [
    (["--gin.MODEL_DIR=x", "--gin.train.train_stepz=3"],
     r"^bad gin binding --gin\.train\.train_stepz=3: .*'train_stepz'.*did you mean train_steps\?"),
    (["--gin.MODEL_DIR=x", "--gin.trian.train_steps=3"],
     r"No configurable matching 'trian'.*did you mean train\?"),
    ([], r"^MODEL_DIR is required .*--gin\.MODEL_DIR="),
    (["--gin.MODEL_DIR=x", "--gin.EVAL_TASK=%NO_SUCH_MACRO"],
     r"NO_SUCH_MACRO is read .* but never set"),
])
def test_train_gin_mistakes_are_one_line(flags, want, tmp_path, capsys):
    flags = [f.replace("=x", f"={tmp_path}/x") for f in flags]
    assert cli.main(["train", f"--gin_file={_tripwired_smoke(tmp_path)}", *flags]) == 2
    msg = one_line_error(capsys.readouterr().err, "train")
    print(msg)
    assert re.search(want, msg), msg
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_export_rejects_a_misspelled_macro(tmp_path, capsys):
    from lmcor.cli import export_command

    code = export_command.main([str(tmp_path), f"--out={tmp_path / 'out'}", "--gin.MODEL_DIRR=x",
                        "--gin.task_vocabulary.spm_model=no/such/vocab.model"])
    msg = one_line_error(capsys.readouterr().err, "export")
    print(msg)
    assert code == 2 and "nothing reads the macro MODEL_DIRR" in msg
    assert not (tmp_path / "out").exists()


class _Planned(Exception):
    """Raised at a pipeline's report stage: every earlier stage is planned."""


@pytest.mark.slow
@pytest.mark.parametrize("run_file", ["runs/quickstart.gin", "runs/quickstart_train.gin",
                                      "runs/tables/e2e.gin", "runs/tables/e2e_ablations.gin",
                                      "runs/tables/e2e_release.gin", "runs/tables/jfleg.gin",
                                      "runs/tables/wmt.gin", "runs/tables/wmt_release.gin"])
def test_every_stage_a_pipeline_plans_passes_its_flag_checks(run_file, tmp_path, monkeypatch):
    """The stages' flags come from the pipeline configs (their train flags, ablations and test
    variants): each stage's command line must pass that command's checks, a binding nothing
    reads included. Stages are recorded instead of run; the checks are the real ones."""
    from lmcor import paths
    from lmcor.pipeline import table
    from lmcor.pipeline.stages import Stages

    stages = []

    def record(pipe, name, module, args, folder=None, settings=None, writes=None):
        assert module == "lmcor.cli", (name, module)  # every stage is `lmcor <command> ...`
        command, *args = args
        if command == "report":
            raise _Planned
        # A training stage is done only once the trainer wrote its summary (not on SIGTERM),
        # an export once the adapter's manifest is there.
        proof = {"train": paths.TRAIN_SUMMARY, "export": "adapter.json"}
        assert writes == proof.get(command), (name, writes)
        stages.append((command, args))

    monkeypatch.setattr(Stages, "run", record)
    dev = "data/pools/e2e_dev_e2e_attributes.jsonl.gz"  # a pool that exists; not read here
    pools = [] if run_file in ("runs/quickstart.gin", "runs/quickstart_train.gin",
                               "runs/tables/wmt.gin", "runs/tables/wmt_release.gin") else [
        f"pipeline.pools = {{'dev': {dev!r}, 'test': {dev!r}}}"]
    gin_flags.parse_gin([run_file], [f"RUN_DIR = {str(tmp_path)!r}", *pools], finalize=False)
    released = gin.get_bindings("pipeline").get("correctors") or {}
    with pytest.raises(_Planned):
        table.pipeline()
    # These two use the released corrector.
    trains = run_file not in ("runs/quickstart.gin", "runs/tables/e2e_release.gin",
                              "runs/tables/wmt_release.gin")
    assert {"evaluate", *(["train"] if trains else [])} <= {command for command, _ in stages}
    exported = {}
    for command, args in stages:
        if command == "export":  # of the run the stage before trained, read by the evaluation
            (train, train_args), out = stages[stages.index((command, args)) - 1], args[1]
            assert train == "train" and f"--gin.MODEL_DIR={args[0]!r}" in train_args
            assert out.startswith("--out=") and args[2:] == ["--adapter"]
            exported[os.path.basename(args[0])] = out[len("--out="):]
            continue
        flags = cli.GIN_COMMANDS[command].parse(args)
        assert flags.files, (command, args)
    if run_file.startswith("runs/tables/") and trains and "ablations" not in run_file:
        # Every row is trained and exported, or taken from a release (WMT's LMCor row).
        assert sorted([*exported, *released]) == ["finetune", "lmcor", "lmcor_single"]
        evaluate = next(args for command, args in stages if command == "evaluate")
        lmcor = exported.get("lmcor") or os.path.join(paths.REPO_ROOT, released["lmcor"])
        assert f"--gin.LMCOR_DIR={lmcor!r}" in evaluate
