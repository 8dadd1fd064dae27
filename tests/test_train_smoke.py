"""`lmcor train` end to end on a real pool: gin/runs/smoke.gin trains a tiny corrector on the
WMT22 en->de system pool, evaluates it with beam search, and a second invocation with a larger
TRAIN_STEPS resumes from the saved step instead of starting over.

The run is held to 8 packed training rows, so that every batch of 8 is the same fixed target
and a model that learns must fit it within 40 steps. One that does not learn stays near the
uniform 6.9 nats over the 1,000-piece vocabulary, and no context-free predictor goes below the
unigram entropy of German text in 1,000 pieces (several nats); fitting the rows needs context."""
import json
import os
import subprocess
import sys

import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(model_dir, cache_dir, *extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               XLA_FLAGS="--xla_force_host_platform_device_count=1", LMCOR_CACHE_DIR=cache_dir)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "lmcor.cli", "train",
                           "--gin_file=gin/runs/smoke.gin", f"--gin.MODEL_DIR={str(model_dir)!r}",
                           *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.slow
def test_smoke_run_then_resume_learns_a_fixed_target(data_dir, tmp_path):
    model_dir, cache = tmp_path / "smoke", str(tmp_path / "cache")
    fixed = ("--gin.seqio_train_data.max_examples=8",)
    first, _ = _train(model_dir, cache, "--gin.TRAIN_STEPS=6", *fixed)
    assert first["final_step"] == 6 and first["stopped"] == "done"
    assert os.path.isfile(model_dir / "config.gin")
    assert first["last_loss"] > 4.0  # six steps in: still far from fitting
    second, log = _train(model_dir, cache, "--gin.TRAIN_STEPS=40", *fixed)
    assert second["final_step"] == 40
    assert "resumed from step 6" in log
    assert second["last_loss"] < 1.5, second
    # Every 10 steps was evaluated (EVAL_EVERY = 10). The best one is the kept checkpoint whose
    # metrics carry that evaluation's validation chrF.
    with open(model_dir / "eval" / "history.jsonl") as f:
        history = {row["step"]: row["metrics"]["chrf"] for row in map(json.loads, f)}
    assert sorted(history) == [10, 20, 30, 40]
    with open(model_dir / "train_summary.json") as f:
        best = json.load(f)["best_step"]
    assert best == max(history, key=history.get)
    manager = ocp.CheckpointManager(model_dir / "checkpoints", item_names=("state", "data"))
    metrics = manager.metrics(best)
    manager.close()
    assert metrics["chrf"] == history[best]
