import gin
import pytest

from lmcor import cli, config


def test_split_gin_flags_separates_files_bindings_and_rest():
    files, bindings, rest = config.split_gin_flags(
        ["--gin_file=a.gin", "--gin_file", "b.gin", "--gin.TRAIN_STEPS=5", "--seed=3", "x"])
    assert files == ["a.gin", "b.gin"]
    assert bindings == ["TRAIN_STEPS=5"]
    assert rest == ["--seed=3", "x"]


def test_binding_without_value_is_rejected():
    with pytest.raises(ValueError, match="--gin.NAME=VALUE"):
        config.split_gin_flags(["--gin.TRAIN_STEPS"])


def test_missing_and_malformed_gin_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gin"):
        config.parse_gin(["nope.gin"], [], finalize=False)
    bad = tmp_path / "bad.gin"
    bad.write_text("this is = = not gin\n")
    gin.clear_config()
    with pytest.raises(ValueError, match="bad.gin"):
        config.parse_gin([str(bad)], [], finalize=False)
    gin.clear_config()


def test_unknown_command_exits_2(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_includes_resolve_when_a_runs_folder_is_importable(tmp_path, monkeypatch):
    """A checkout's output folder `runs/` on sys.path (python -m from the repository root)
    imports as a namespace package; gin's `include 'runs/...'` must still find gin/runs/."""
    import gin

    from lmcor import config as gin_config

    (tmp_path / "runs" / "tables").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        gin_config.parse_gin(["runs/tables/e2e.gin"], [], finalize=False)
        assert gin.query_parameter("quickstart.task") == "e2e"
    finally:
        gin.clear_config()
