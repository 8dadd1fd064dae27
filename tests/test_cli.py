"""The command-line entry points: `--help` of every command, and one-line errors (exit status 2)
for mistakes in the flags and Gin files.

Cheap checks (help, flag form, gin file existence and syntax) run in a fresh interpreter, where
they must not import the heavy libraries: a command that imports them first takes 10-20 s to
say what a flag check can say at once. The bindings themselves: test_cli_gin_bindings.py."""
import json
import pathlib
import re
import subprocess
import sys

import gin
import pytest

from lmcor import cli
from lmcor import paths
from lmcor.cli import gin_flags

from _cli import one_line_error

HEAVY = ("jax", "tensorflow", "seqio", "flax", "torch", "transformers")
GIN_COMMANDS = ("train", "sample", "evaluate", "quickstart", "pipeline")
# serve's own flags are another module's; it is only dispatched to.
ALL_COMMANDS = (*GIN_COMMANDS, "generate", "export", "report", "score", "pool")


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _fresh(cases):
    """[{"rc", "out", "err"}] of `cli.main(argv)` for each argv, in one fresh interpreter, and the
    heavy modules it had imported at the end."""
    script = (
        "import contextlib, io, json, sys\n"
        "from lmcor import cli\n"
        "results = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    out, err = io.StringIO(), io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            rc = cli.main(argv)\n"
        "        except SystemExit as e:\n"
        "            rc = e.code\n"
        "    results.append({'rc': rc, 'out': out.getvalue(), 'err': err.getvalue()})\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(json.dumps({'results': results, 'heavy': heavy}))\n")
    done = subprocess.run([sys.executable, "-P", "-c", script, json.dumps(cases)],
                          cwd=paths.REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    return report["results"], report["heavy"]


def _python_m(module: str, *args: str):
    """(exit status, stdout, stderr, heavy modules imported) of `python -m module args`, the
    imports read from `-X importtime`."""
    done = subprocess.run([sys.executable, "-P", "-X", "importtime", "-m", module, *args],
                          cwd=paths.REPO_ROOT, capture_output=True, text=True, timeout=120)
    lines = done.stderr.splitlines()
    imported = {line.rsplit("|", 1)[-1].strip() for line in lines
                if line.startswith("import time:")}
    err = "".join(f"{line}\n" for line in lines if not line.startswith("import time:"))
    return done.returncode, done.stdout, err, sorted(imported & set(HEAVY))


# ---------------------------------------------------------------------- --help


def test_every_command_has_a_help_that_imports_no_heavy_library():
    cases = [[name, "--help"] for name in ALL_COMMANDS]
    results, heavy = _fresh(cases)
    print("heavy modules imported by every --help:", heavy)
    assert heavy == []
    for argv, got in zip(cases, results):
        name = argv[0]
        assert got["rc"] == 0 and got["err"] == "", (argv, got)
        assert got["out"].startswith(f"usage: lmcor {name}"), (argv, got["out"][:200])
        if name in GIN_COMMANDS or name == "export":
            assert "--gin_file" in got["out"] and "--gin.NAME=VALUE" in got["out"], got["out"]


@pytest.mark.parametrize("argv,command", [
    (["lmcor.cli", "train"], "train"), (["lmcor.cli", "evaluate"], "evaluate"),
    (["lmcor.cli", "quickstart"], "quickstart"), (["lmcor.sampling"], "sample"),
    (["lmcor.cli", "generate"], "generate"), (["lmcor.serve"], "serve")])
def test_python_m_help_is_the_command_help_without_heavy_imports(argv, command):
    code, out, err, heavy = _python_m(*argv, "--help")
    print(f"python -m {' '.join(argv)} --help imported:", heavy)
    assert (code, err, heavy) == (0, "", [])
    assert out.startswith(f"usage: lmcor {command}")


@pytest.mark.parametrize("module,command", [("lmcor.evaluation.evaluate", "evaluate"),
                                            ("lmcor.pipeline.table", "pipeline")])
def test_a_gin_command_module_run_as_a_script_names_the_command_instead(module, command):
    """Run as __main__, the module's configurables would be registered a second time when a
    Gin file imports it by name: it exits 1 with the command line to use."""
    code, out, err, _ = _python_m(module, "--help")
    assert (code, out) == (1, "")
    want = f"usage: lmcor {command} ... (or python -m lmcor.cli {command} ...)"
    assert err.strip().splitlines()[-1] == want


@pytest.mark.parametrize("command, macros", [
    ("train", ["MODEL_DIR", "TRAIN_STEPS", "MIXTURE_OR_TASK_NAME", "BATCH_SIZE"]),
    ("sample", ["OUTPUT_DIR", "DATA_DIR", "SEED"]),
    ("evaluate", ["EVAL_DIR", "MIXTURE_OR_TASK_NAME", "EVAL_POOL", "FINETUNE_DIR",
                  "LMCOR_SINGLE_DIR", "LMCOR_DIR", "EVAL_MAX_EXAMPLES"]),
    ("quickstart", ["RUN_DIR", "QUICKSTART_EXAMPLES", "TRAIN_STEPS"]),
    ("pipeline", ["RUN_DIR", "TRAIN_STEPS"]),
])
def test_gin_command_help_lists_flags_and_main_macros(command, macros, capsys):
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lmcor {command} ")
    if command == "pipeline":  # the same runner, under its own name
        assert "lmcor quickstart" not in out
    for flag in ("--gin_file=FILE", "--gin.NAME=VALUE", "--help"):
        assert flag in out, out
    for macro in macros:
        assert f"\n  {macro} " in out, (macro, out)
    assert ("--coordinator_address" in out) == (command in ("train", "sample"))


def test_the_macros_a_help_lists_are_read_by_the_gin_files():
    """A help must not advertise a macro no Gin file reads (`%NAME`): binding it would fail."""
    text = "\n".join(p.read_text() for p in pathlib.Path(paths.GIN_DIR).rglob("*.gin"))
    for name in GIN_COMMANDS:
        for macro, _ in cli.GIN_COMMANDS[name].macros:
            assert f"%{macro}" in text, (name, macro)


# ---------------------------------------------------------------------- cheap flag mistakes


def test_flag_and_file_mistakes_are_one_line_before_any_heavy_import(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("train.train_steps = 3\ntrain.model_dir = = 'x'\n")
    unclosed = tmp_path / "unclosed.gin"
    unclosed.write_text("include 'runs/smoke.gin'\nTRAIN_STEPS = [1,\n")
    including = tmp_path / "including.gin"
    including.write_text(f"include '{bad}'\n")
    cases, wants = [], []
    for name in GIN_COMMANDS:
        cases += [[name, "--gin_file=runs/smoke.gin", "--gin.TRAIN_STEPS"],
                  [name, "--gin_file=no/such/file.gin"],
                  [name, "--gin_file=runs/smok.gin"],
                  [name, f"--gin_file={bad}"],
                  [name, f"--gin_file={including}"],
                  [name, f"--gin_file={unclosed}"],
                  [name, "--gin_file=runs/smoke.gin", "--gin.TRAIN_STEPS=[1, 2"],
                  [name, "--gin_file=runs/smoke.gin", "--gin_files=runs/smoke.gin"],
                  [name, "--gin_file"],
                  [name, "--gin_file=runs/smoke.gin", "--gin.TRAIN_STEPZ=3"]]
        wants += [r"--gin\.TRAIN_STEPS needs the form --gin\.NAME=VALUE",
                  r"gin file not found: 'no/such/file\.gin'",
                  r"gin file not found: 'runs/smok\.gin'.*did you mean runs/smoke\.gin",
                  r"bad gin file .*bad\.gin: .*line 2",
                  r"bad gin file .*including\.gin: .*bad\.gin line 2",
                  r"bad gin file .*unclosed\.gin: EOF in multi-line statement",
                  r"bad gin binding --gin\.TRAIN_STEPS=\[1, 2: .*written bare",
                  r"unrecognized arguments: --gin_files=runs/smoke\.gin .*did you mean --gin_file",
                  r"--gin_file needs a value",
                  r"^--gin\.TRAIN_STEPZ=3: nothing reads the macro TRAIN_STEPZ .*did you mean "
                  r"TRAIN_STEPS\?$"]
    for name in ("train", "sample", "evaluate", "pipeline"):
        cases.append([name])
        wants.append(r"no --gin_file given")
    cases += [["train", "--gin_file=runs/smoke.gin"],
              ["evaluate", "--gin_file=runs/evaluate.gin", "--gin_file=tasks/e2e.gin"],
              ["pipeline", "--gin_file=runs/pipeline_gemma_cpu.gin"]]
    wants += [r"^MODEL_DIR is required \(a Gin file sets it to %gin\.REQUIRED\); add "
              r"--gin\.MODEL_DIR=VALUE$", r"^EVAL_DIR is required .*--gin\.EVAL_DIR=VALUE$",
              r"^RUN_DIR is required"]
    results, heavy = _fresh(cases)
    print("heavy modules imported:", heavy)
    assert heavy == []
    for argv, want, got in zip(cases, wants, results):
        assert got["rc"] == 2 and got["out"] == "", (argv, got)
        assert re.search(want, one_line_error(got["err"], argv[0])), (argv, got["err"])
    code, out, err, heavy = _python_m("lmcor.cli", "train", "--gin_file=nope.gin")
    assert (code, out, heavy) == (2, "", [])
    assert "gin file not found: 'nope.gin'" in one_line_error(err, "train")


def test_the_old_quickstart_binding_names_fail_naming_the_new_ones(tmp_path, capsys):
    """`quickstart.*` is now `pipeline.*`: a file or flag still using the old name is refused in
    one line naming the binding to write, before anything is imported; so is a library caller
    parsing the old name after the imports."""
    old = tmp_path / "old.gin"
    old.write_text("include 'runs/quickstart.gin'\n\nquickstart.test_examples = 8\n")
    cases = [["pipeline", f"--gin_file={old}"],
             ["quickstart", "--gin.quickstart.test_examples=24"],
             ["pipeline", "--gin_file=runs/quickstart.gin", "--gin.eval/quickstart.rows=[]"]]
    wants = [rf"^bad gin file {old}: quickstart\.test_examples was renamed "
             r"pipeline\.test_examples \(line 3\)$",
             r"^--gin\.quickstart\.test_examples=24: quickstart\.test_examples was renamed "
             r"pipeline\.test_examples$",
             r"eval/quickstart\.rows was renamed eval/pipeline\.rows$"]
    results, heavy = _fresh(cases)
    assert heavy == []
    for argv, want, got in zip(cases, wants, results):
        assert got["rc"] == 2 and got["out"] == "", (argv, got)
        assert re.search(want, one_line_error(got["err"], argv[0])), (argv, got["err"])
    import lmcor.pipeline.table  # noqa: F401  (registers `pipeline`)

    with pytest.raises(gin_flags.GinError, match=r"quickstart was renamed pipeline"):
        gin_flags.parse_gin([], ["quickstart.rows = []"], finalize=False)


def test_pipeline_errors_name_the_pipeline(capsys):
    assert cli.main(["pipeline", "--gin_file=nope.gin"]) == 2
    assert "gin file not found" in one_line_error(capsys.readouterr().err, "pipeline")


def test_export_flag_mistakes_are_one_line(tmp_path, capsys):
    from lmcor.cli import export_command

    with pytest.raises(SystemExit) as exit_:
        export_command.main([str(tmp_path), f"--out={tmp_path / 'out'}", "--gin.MODEL_DIR"])
    assert exit_.value.code == 2
    assert "--gin.MODEL_DIR needs the form" in one_line_error(capsys.readouterr().err, "export")
    with pytest.raises(SystemExit):
        export_command.main([str(tmp_path)])
    assert "--out" in one_line_error(capsys.readouterr().err, "export")


def test_generate_flag_mistakes_are_one_line(capsys):
    from lmcor.cli import generate_command

    with pytest.raises(SystemExit) as exit_:
        generate_command.main(["--max_new_tokens=8"])
    assert exit_.value.code == 2
    assert "--prompt" in one_line_error(capsys.readouterr().err, "generate")


def test_an_error_ends_an_open_progress_bar_and_shows_its_traceback_only_when_debugging(
        capsys, monkeypatch):
    from tqdm import tqdm

    from lmcor.cli.command_errors import DEBUG_ENV, report_error

    try:  # what gin raises from inside a configurable: the reason, then where, on its own line
        raise ValueError("x.jsonl:3: field 'id': must not be empty\n"
                         "  In call to configurable 'evaluation' (<function evaluation>)")
    except ValueError as e:
        err = e
    monkeypatch.setenv(DEBUG_ENV, "0")  # and back to unset after the --debug below sets it
    bar = tqdm(total=10, desc="reading", file=sys.stderr)
    bar.update(3)  # an interrupted loop leaves its bar open, the cursor after it
    assert report_error("lmcor export", err) == 2
    lines = capsys.readouterr().err.split("\n")
    assert len(lines) == 3 and "reading" in lines[0] and "Traceback" not in lines[0]
    assert lines[-2:] == ["lmcor export: error: x.jsonl:3: field 'id': must not be empty", ""]

    # A Gin command's --debug sets LMCOR_DEBUG (for the stages it runs as processes too).
    assert cli.main(["evaluate", "--debug", "--gin_file=no_such.gin"]) == 2
    err_text = capsys.readouterr().err
    assert err_text.startswith("Traceback") and err_text.endswith(
        "\nlmcor evaluate: error: gin file not found: 'no_such.gin' (also looked under "
        f"{paths.GIN_DIR})\n")
