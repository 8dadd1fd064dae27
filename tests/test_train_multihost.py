"""Two local processes (gloo CPU collectives via lmcor.cli.distributed) train the tiny T5 for 10
steps, each reading only its own data shard, and report the same losses as one process that
reads both shards."""
import json
import os
import subprocess
import sys

import numpy as np
from conftest import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "_train_worker.py")
STEPS = 10


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               XLA_FLAGS="--xla_force_host_platform_device_count=2", **extra)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _summary(out: str) -> dict:
    lines = [l for l in out.splitlines() if l.startswith("SUMMARY ")]
    assert lines, out[-2000:]
    return json.loads(lines[0][len("SUMMARY "):])


def _launch(model_dir, env, extra=()):
    return subprocess.Popen([sys.executable, WORKER, str(model_dir), str(STEPS),
                             "--gin.train.data_shards=2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _wait(procs, timeout=500):
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err[-3000:]
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


def test_two_processes_match_one(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    procs = [_launch(tmp_path / "multi", _env(JAX_COORDINATOR_ADDRESS=address,
                                              JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
             for i in range(2)]
    single = _launch(tmp_path / "single", _env())
    hosts = [_summary(o) for o in _wait(procs)]
    one = _summary(_wait([single])[0])
    assert len(one["losses"]) == STEPS
    # Both hosts see the same global loss, equal to the one-process run over the same shards.
    np.testing.assert_allclose(hosts[0]["losses"], hosts[1]["losses"], rtol=0)
    np.testing.assert_allclose(hosts[0]["losses"], one["losses"], rtol=1e-5)
    assert hosts[0]["step"] == STEPS
    # The two hosts wrote one checkpoint between them, restorable like any other.
    assert str(STEPS) in os.listdir(tmp_path / "multi" / "checkpoints")
