"""Trains a tiny Gemma corrector for a few steps on the given CPU cores and prints its losses.

    python tests/_two_cores_worker.py CORES    # e.g. "0" or "0,1"

The recipe of the WMT table in small: LoRA above a frozen bottom stack, rows that share each
input among its references, length-bucketed batches, bf16 compute. The process is pinned to
CORES before JAX starts, so XLA's thread pool has that many threads: one run per core count.
"""
import json
import os
import sys

os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(",")})
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lmcor.models import partitioning  # noqa: E402
from lmcor.training import batches, grouped_rows, state as state_lib  # noqa: E402
from lmcor.training.loop import _global_batch, _host_batch, build_step  # noqa: E402
from lmcor.training.builders import gemma_model  # noqa: E402

STEPS, BATCH = 3, 4


def groups(n: int = 12):
    rng = np.random.default_rng(0)
    return [(tuple(rng.integers(3, 500, rng.integers(4, 60)).tolist()),
             [tuple(rng.integers(3, 500, rng.integers(2, 20)).tolist()) + (1,)
              for _ in range(rng.integers(1, 4))]) for _ in range(n)]


def main() -> None:
    rows = grouped_rows.grouped_rows(groups(), 128, bos_id=2)
    source = batches.BatchSource({0: rows}, 1, BATCH, seed=0, length_buckets=(32, 64, 128))
    model = gemma_model(preset="tiny", lora_rank=4, freeze_embeddings=True, freeze_layers=3,
                        dtype="bfloat16", d_model=128, d_ff=512)
    mesh = partitioning.make_mesh(1, 1)
    schedule = state_lib.make_schedule("constant", 1e-2)
    state, step_fn, frozen = build_step(model, state_lib.make_optimizer(schedule, name="adamw"),
                                        schedule, mesh, 0)
    losses = []
    with jax.set_mesh(mesh):
        for step in range(STEPS):
            state, metrics = step_fn(state, _global_batch(_host_batch(source, step), mesh), frozen)
            losses.append(float(metrics["loss"]))
    print("LOSSES " + json.dumps({"losses": losses, "threads": len(os.sched_getaffinity(0))}))


if __name__ == "__main__":
    main()
