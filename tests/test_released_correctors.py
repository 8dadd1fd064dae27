"""The released correctors in data/correctors/: each is the LoRA adapter of a table's LMCor row,
bf16, within the 16 MB release limit, intact (its manifest's sha256), and the checkpoint its
run selected by validation, with the learning curve that shows the selection."""
import json
import os

import pytest

from lmcor import paths
from lmcor.checkpoints import released_adapter
from lmcor.io_utils import file_sha256

ROOT = os.path.join(paths.REPO_ROOT, "data", "correctors")
RELEASED = sorted(os.listdir(ROOT)) if os.path.isdir(ROOT) else []


def test_the_e2e_corrector_is_released():
    assert "e2e" in RELEASED  # README command (a) and the E2E table's LMCor row read it


@pytest.mark.parametrize("name", RELEASED)
def test_a_released_corrector_is_its_runs_best_validated_adapter(name):
    folder = os.path.join(ROOT, name)
    info = released_adapter.manifest(folder)
    weights = os.path.join(folder, released_adapter.WEIGHTS)
    assert info["format"] == released_adapter.FORMAT and info["dtype"] == "bfloat16"
    assert info["sha256"] == file_sha256(weights)
    assert os.path.getsize(weights) == info["bytes"] <= 16_000_000
    for run_file in released_adapter.RUN_FILES:
        assert os.path.isfile(os.path.join(folder, run_file)), run_file
    training = info["training"]
    assert info["step"] == training["best_step"]
    with open(os.path.join(folder, "eval", "history.jsonl"), encoding="utf-8") as f:
        history = [json.loads(line) for line in f]
    assert len(history) == training["evaluations"]
    with open(os.path.join(folder, "config.gin"), encoding="utf-8") as f:
        metric = next(line.split("=", 1)[1].strip().strip("'\"") for line in f
                      if line.startswith("BEST_METRIC"))
    # The released step is the one with the best validation score of its run.
    best = max(history, key=lambda r: r["metrics"][metric])
    assert best["step"] == info["step"]
