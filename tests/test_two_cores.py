"""Training on both cores of a CPU (XLA's thread pool in one process, as the tables run) computes
what training on one core computes: the same losses up to float reassociation."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "_two_cores_worker.py")


def _losses(cores: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("XLA_FLAGS", None)  # one CPU device: the cores are XLA's threads, not devices
    out = subprocess.run([sys.executable, WORKER, cores], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("LOSSES "))
    return json.loads(line[len("LOSSES "):])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_two_core_training_equals_one_core_training():
    cores = sorted(os.sched_getaffinity(0))[:2]
    one, two = _losses(str(cores[0])), _losses(f"{cores[0]},{cores[1]}")
    assert (one["threads"], two["threads"]) == (1, 2)
    assert len(one["losses"]) == 3 and np.all(np.isfinite(one["losses"]))
    # The loss moves (the steps train), and both runs move it alike.
    assert one["losses"][0] != one["losses"][-1]
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
