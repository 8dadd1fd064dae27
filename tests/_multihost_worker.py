"""One host of the local multi-process job that tests/test_distributed.py spawns.

usage: python tests/_multihost_worker.py TEXT_FILE OUT_DIR   (JAX_* variables name the host)

Joins the job through `lmcor.cli.distributed.initialize`, streams TEXT_FILE's lines through
`host_shard`, runs two cross-process collectives over what it read, and writes
OUT_DIR/host{process_index}.json for the test to check.
"""
import json
import logging
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from lmcor.cli import distributed  # noqa: E402
from lmcor.data.host_shard import host_shard  # noqa: E402


def read_lines(path):
    """(index, line) pairs, keeping empty lines: they are real segments."""
    with open(path, encoding="utf-8", newline="") as f:
        for index, line in enumerate(f):
            yield index, line[:-1] if line.endswith("\n") else line


def global_sum(value: int) -> int:
    """Sum over hosts of one scalar per host, computed by a jitted cross-process reduction."""
    mesh = Mesh(np.asarray(jax.devices()), ("hosts",))
    local = np.asarray([value], dtype=np.int32)
    stacked = jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec("hosts")), local)
    replicated = NamedSharding(mesh, PartitionSpec())
    total = jax.jit(jnp.sum, out_shardings=replicated)(stacked)
    return int(total.addressable_data(0))


def main(text_file: str, out_dir: str) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    info = distributed.initialize(timeout_s=60)
    ids, chars = [], 0
    for index, line in host_shard(read_lines(text_file)):
        ids.append(index)
        chars += len(line)
    counts = multihost_utils.process_allgather(np.asarray(len(ids), dtype=np.int32))
    result = {
        "process_index": info.process_index,
        "process_count": info.process_count,
        "is_main_host": distributed.is_main_host(),
        "ids": ids,
        "local_chars": chars,
        "allgather_counts": np.asarray(counts).reshape(-1).tolist(),
        "global_chars": global_sum(chars),
    }
    probe = logging.getLogger("lmcor.multihost_probe")
    probe.info("info-from-host-%d", info.process_index)
    probe.warning("warning-from-host-%d", info.process_index)
    tmp = os.path.join(out_dir, f".host{info.process_index}.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(out_dir, f"host{info.process_index}.json"))
    # Every host must finish its collectives before the coordinator (host 0) goes away.
    multihost_utils.sync_global_devices("lmcor-multihost-worker-done")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
