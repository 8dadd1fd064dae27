"""lmcor.paths is the one owner of the data root: Gin, else $LMCOR_DATA_DIR, else ../shared/data,
and every reader of raw data (SeqIO tasks, the sampling job, `lmcor pool import`) asks it."""
import os

import gin
import pytest

from lmcor import paths


@pytest.fixture
def no_data_env(monkeypatch):
    monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)


def test_data_root_binding_then_environment_then_shared(no_data_env, monkeypatch, tmp_path):
    shared = os.path.join(os.path.dirname(paths.REPO_ROOT), "shared", "data")
    assert paths.data_root() == shared
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path / "env"))
    assert paths.data_root() == str(tmp_path / "env")
    with gin.unlock_config():
        gin.bind_parameter("data_root.path", str(tmp_path / "gin"))
    try:
        assert paths.data_root() == str(tmp_path / "gin")
    finally:
        gin.clear_config()


def test_the_sampling_job_reads_the_data_root(monkeypatch, tmp_path):
    from lmcor.sampling import job

    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(job.SampleError, match=f"from {tmp_path / 'nowhere'}"):
        job.sample_pool(output_dir=str(tmp_path / "out"), task="e2e", split="test",
                        demo_split="dev", backend=None)


def test_pool_import_reads_the_data_root(monkeypatch, tmp_path, capsys):
    from lmcor.cli import pool_command

    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path / "nowhere"))
    assert pool_command.main(["import", "--dataset=e2e", "--split=test",
                          f"--out={tmp_path / 'pool'}"]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
