"""`lmcor train` end to end on a real pool: gin/runs/smoke.gin trains a tiny corrector on the
WMT22 en->de system pool, evaluates it with beam search, and a second invocation with a larger
TRAIN_STEPS resumes from the saved step instead of starting over."""
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
def test_smoke_run_then_resume_with_more_steps(data_dir, tmp_path):
    model_dir, cache = tmp_path / "smoke", str(tmp_path / "cache")
    first, _ = _train(model_dir, cache, "--gin.TRAIN_STEPS=6")
    assert first["final_step"] == 6 and first["stopped"] == "done"
    assert os.path.isfile(model_dir / "config.gin")
    second, log = _train(model_dir, cache, "--gin.TRAIN_STEPS=10")
    assert second["final_step"] == 10
    assert "resumed from step 6" in log
    assert second["last_loss"] < 9.0  # a real cross-entropy over a 1000-piece vocabulary
    # Step 10 was evaluated (EVAL_EVERY = 10): its checkpoint carries the validation chrF.
    manager = ocp.CheckpointManager(model_dir / "checkpoints", item_names=("state", "data"))
    metrics = manager.metrics(10)
    manager.close()
    assert metrics is not None and 0.0 <= metrics["chrf"] <= 100.0
