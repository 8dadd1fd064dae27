"""`lmcor evaluate` on the checkout's real pools: gin/runs/evaluate_pools*.gin name released
`data/pools/<name>.jsonl.gz` files, read through the task's data source (PoolDataSource.records)
and found from the repository root whatever the working directory. A real WMT22 slice, released
into a stand-in checkout, plays the released pool (so the test does not depend on which pools
are released yet)."""
import json

import gin
import pytest

from lmcor.evaluation import evaluate, inputs, rerank
from lmcor.data import pool, pool_release
from lmcor.data.pool import read_pool
from lmcor.io_utils import read_lines
from lmcor.tasks import common
from lmcor.cli import evaluate_command

N = 5


@pytest.fixture(scope="module")
def pool_dir(wmt22_pool):
    return wmt22_pool(N)


def test_records_is_the_split_in_pool_order(pool_dir):
    source = common.PoolDataSource({"test": lambda: read_pool(pool_dir)})
    assert [r["id"] for r in source.records("test")] == [r["id"] for r in read_pool(pool_dir)]
    assert source.num_input_examples("test") == N
    with pytest.raises(ValueError, match=r"split 'validation': this source has \['test'\]"):
        source.records("validation")


@pytest.mark.parametrize("gin_file,pool_name,value", [
    ("evaluate_pools.gin", "e2e_test_e2e_attributes", "A->A"),
    ("evaluate_pools_prompt_b.gin", "e2e_test_e2e_mr", "A->B"),
])
def test_pools_gin_file_from_another_directory(gin_file, pool_name, value, pool_dir, tmp_path,
                                               monkeypatch):
    repo = tmp_path / "checkout"
    release = pool_release.encode_release(pool_name, read_pool(pool_dir), {})
    pool_release.write_releases([release], str(repo / "data" / "pools"))
    monkeypatch.setattr(pool, "REPO_ROOT", str(repo))
    monkeypatch.chdir(tmp_path)  # no data/pools/ here: only the repository root has them
    out = tmp_path / "eval"
    argv = ["--gin_file=gin/runs/evaluate.gin", "--gin_file=gin/tasks/e2e.gin",
            f"--gin_file=gin/runs/{gin_file}", f"--gin.EVAL_DIR='{out}'",
            "--gin.evaluation.bootstrap_samples=50"]
    try:
        assert evaluate_command.main(argv) == 0
    finally:
        gin.clear_config()
    results = json.loads((out / "results.json").read_text())
    assert results["num_examples"] == N
    assert results["tags"] == {"ablation": "prompt", "value": value}
    assert results["metrics"] == ["bleu", "rougeL", "chrf"]  # the E2E task's, not the pool's
    names = [r["name"] for r in results["rows"]]
    assert names[:2] == ["LLM greedy", "LLM sample"] and names[-2:] == ["MBR rerank", "oracle"]
    records = list(read_pool(pool_dir))
    assert read_lines(out / "predictions" / "llm_greedy.txt") == rerank.greedy_outputs(records)
    assert read_lines(out / "predictions" / "source.txt") == [r["source"] for r in records]


def test_task_without_pool_records_names_the_fix(tmp_path):
    cfg = evaluate.evaluation(task="wmt_lmcor_mix", out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="EVAL_POOL"):
        inputs.load_records(cfg)
