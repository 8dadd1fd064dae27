import gin
import pytest

from lmcor import cli
from lmcor.cli import gin_flags


def test_split_gin_flags_separates_files_bindings_and_rest():
    files, bindings, rest = gin_flags.split_gin_flags(
        ["--gin_file=a.gin", "--gin_file", "b.gin", "--gin.TRAIN_STEPS=5", "--seed=3", "x"])
    assert files == ["a.gin", "b.gin"]
    assert bindings == ["TRAIN_STEPS=5"]
    assert rest == ["--seed=3", "x"]


def test_binding_without_value_is_rejected():
    with pytest.raises(ValueError, match="--gin.NAME=VALUE"):
        gin_flags.split_gin_flags(["--gin.TRAIN_STEPS"])


def test_missing_and_malformed_gin_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gin"):
        gin_flags.parse_gin(["nope.gin"], [], finalize=False)
    bad = tmp_path / "bad.gin"
    bad.write_text("this is = = not gin\n")
    gin.clear_config()
    with pytest.raises(ValueError, match="bad.gin"):
        gin_flags.parse_gin([str(bad)], [], finalize=False)
    gin.clear_config()


def test_unknown_command_exits_2(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_includes_resolve_when_a_runs_folder_is_importable(tmp_path, monkeypatch):
    """A checkout's output folder `runs/` on sys.path (python -m from the repository root)
    imports as a namespace package; gin's `include 'runs/...'` must still find gin/runs/."""
    import gin

    from lmcor.cli import gin_flags

    (tmp_path / "runs" / "tables").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        gin_flags.parse_gin(["runs/tables/e2e.gin"], [], finalize=False)
        assert gin.query_parameter("pipeline.task") == "e2e"
    finally:
        gin.clear_config()


# ---------------------------------------------------------------------- --gin.NAME=VALUE values


@gin.configurable("echo", module="test_config")
def _echo(value=None):
    return value


@gin.configurable("three", module="test_config")
def _three():
    return 3


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _bound(binding: str):
    """What `echo` receives after parse_gin read `binding` as a command-line binding."""
    gin_flags.parse_gin([], [binding], finalize=False)
    return _echo()


@pytest.mark.parametrize("text", ["runs/x", "/tmp/a b", "bfloat16", "gs://bucket/run-1", "it's",
                                  "e2e_lmcor_single", "1.0.0"])
def test_a_bare_string_binds_as_its_quoted_form(text, clean_gin):
    bare = _bound(f"echo.value={text}")
    gin.clear_config()
    quoted = _bound(f"echo.value={text!r}")  # the shell's view of --gin.echo.value="'text'"
    assert bare == quoted == text


def test_bare_and_quoted_model_dir_bind_the_same_macro(clean_gin):
    values = []
    for binding in ["MODEL_DIR=runs/x", "MODEL_DIR='runs/x'", 'MODEL_DIR="runs/x"',
                    "MODEL_DIR = runs/x"]:
        gin.clear_config()
        gin_flags.parse_gin([], [binding], finalize=False)
        values.append(gin.query_parameter("%MODEL_DIR"))
    assert values == ["runs/x"] * 4


@pytest.mark.parametrize("binding, want", [
    ("echo.value=5", 5), ("echo.value=-3", -3), ("echo.value=1e-3", 1e-3),
    ("echo.value=True", True), ("echo.value=None", None),
    ("echo.value=[1, 'a']", [1, "a"]), ("echo.value=(1, 2)", (1, 2)),
    ("echo.value={'k': [1]}", {"k": [1]}), ("echo.value='5'", "5"),
    ("echo.value=@three()", 3), ("echo.value = 7", 7),
])
def test_values_gin_parses_keep_their_type(binding, want, clean_gin):
    got = _bound(binding)
    assert got == want and type(got) is type(want)


def test_references_and_macros_stay_references(clean_gin):
    gin_flags.parse_gin([], ["N=5", "echo.value=%N"], finalize=False)
    assert _echo() == 5
    gin.clear_config()
    gin_flags.parse_gin([], ["echo.value=@three"], finalize=False)
    assert _echo()() == 3  # an unevaluated reference: the configurable itself


@pytest.mark.parametrize("value", ["[1, 2", "'unclosed", "{'a': 1", "'a' b", "[a]", ""])
def test_a_value_that_does_not_parse_is_one_line_saying_how_to_write_a_string(value, clean_gin):
    with pytest.raises(ValueError) as err:
        gin_flags.parse_gin([], [f"x={value}"], finalize=False)
    msg = str(err.value)
    assert msg.startswith(f"bad gin binding --gin.x={value}: ")
    assert "a string value can be written bare (--gin.NAME=text) or quoted " \
           "(--gin.NAME=\"'text'\")" in msg
    assert "\n" not in msg


def test_other_binding_errors_are_one_line_without_the_string_hint(clean_gin):
    for binding, reason in [("no_such_configurable.x=runs/x", "No configurable matching"),
                            ("echo.value=@no_such_ref", "No configurable matching reference")]:
        with pytest.raises(ValueError, match=reason) as err:
            gin_flags.parse_gin([], [binding], finalize=False)
        assert "\n" not in str(err.value) and "string value" not in str(err.value)
        gin.clear_config()


def test_bindings_inside_gin_files_are_not_quoted(tmp_path, clean_gin):
    path = tmp_path / "bare.gin"
    path.write_text("MODEL_DIR = runs/x\n")
    with pytest.raises(ValueError, match="bad gin file .*bare.gin"):
        gin_flags.parse_gin([str(path)], [], finalize=False)


def test_quickstart_flags_for_its_stages_stay_strings(clean_gin):
    from lmcor.pipeline.stages import quoted

    for text in ["/runs/it's here", "123", "True", "[a]", "@x"]:
        gin.clear_config()
        assert _bound(f"echo.value={quoted(text)}") == text


# ---------------------------------------------------------------------- each command's flags
# Each command takes `--gin.NAME=runs/x` (no inner quotes); these stop at a cheap error that the
# bare value itself reaches, before any data or model is loaded.


def _gin_file(tmp_path, text: str) -> str:
    path = tmp_path / "cmd.gin"
    path.write_text(text)
    return str(path)


def test_sample_command_takes_bare_strings(tmp_path, clean_gin, capsys):
    gin_file = _gin_file(tmp_path, "sample_pool.output_dir = %OUTPUT_DIR\n"
                                   "sample_pool.task = 'e2e'\nsample_pool.split = 'test'\n"
                                   "sample_pool.demo_split = 'dev'\nsample_pool.backend = None\n")
    out = tmp_path / "pool dir"
    assert cli.main(["sample", f"--gin_file={gin_file}", f"--gin.OUTPUT_DIR={out}",
                     "--gin.PromptConfig.variant=e2e_nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown prompt variant 'e2e_nope'" in err, err
    assert gin.query_parameter("%OUTPUT_DIR") == str(out)
    gin.clear_config()
    # A value that still does not parse is the command's usual one-line error, with the hint.
    assert cli.main(["sample", f"--gin_file={gin_file}", "--gin.OUTPUT_DIR=[1, 2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmcor sample: error: bad gin binding --gin.OUTPUT_DIR=[1, 2: ")
    assert err.count("\n") == 1 and "written bare (--gin.NAME=text)" in err


def test_evaluate_command_takes_bare_strings(tmp_path, clean_gin, capsys):
    gin_file = _gin_file(tmp_path, "evaluation.task = 'e2e_lmcor'\n"
                                   "evaluation.out_dir = %EVAL_DIR\n")
    # The bare path reached Gin as a string: the run got as far as the configurable's own
    # check, which evaluate reports as its one-line input error (exit 2).
    code = cli.main(["evaluate", f"--gin_file={gin_file}", f"--gin.EVAL_DIR={tmp_path}/eval",
                     "--gin.evaluation.mbr_utility=no_such_utility"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert "evaluation.mbr_utility='no_such_utility'" in err[-1]
    assert gin.query_parameter("%EVAL_DIR") == f"{tmp_path}/eval"


@pytest.mark.parametrize("command", ["quickstart", "pipeline"])
def test_quickstart_and_pipeline_commands_take_bare_strings(command, tmp_path, clean_gin):
    gin_file = _gin_file(tmp_path, "pipeline.rows = ['finetune']\n"
                                   "pipeline.correctors = {'lmcor': %CORRECTOR}\n")
    with pytest.raises(ValueError, match=r"\['lmcor'\]: 'no/such/corrector' is not a folder"):
        cli.main([command, f"--gin_file={gin_file}", f"--gin.pipeline.run_dir={tmp_path}/run",
                  "--gin.CORRECTOR=no/such/corrector"])
    assert gin.query_parameter("pipeline.run_dir") == f"{tmp_path}/run"
    assert not (tmp_path / "run").exists()
