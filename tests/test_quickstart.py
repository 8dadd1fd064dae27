"""Quickstart mechanics: stages run as processes, finished stages are skipped on rerun, changed
settings rerun them, a failing stage stops the pipeline naming itself; the flags it builds
parse with the real Gin files."""
import json

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
    assert set(json.loads((tmp_path / "timings.json").read_text())) == {"copy", "total"}


def test_built_flags_parse_with_the_real_gin_files(tmp_path):
    import gin

    from lmcor import config as gin_config
    from lmcor.tasks.common import pool_overrides

    pools = {"dev": "/p/dev", "test": "/p/test"}
    args = quickstart._train_args("lmcor", str(tmp_path / "m"), pools, 7, [])
    files, bindings, rest = gin_config.split_gin_flags(args)
    assert not rest
    try:
        gin_config.parse_gin(["models/t5_1_1_tiny.gin", *files], bindings, finalize=False)
        assert gin.query_parameter("%TRAIN_STEPS") == 7
        assert pool_overrides() == {"e2e": pools}
    finally:
        gin.clear_config()
