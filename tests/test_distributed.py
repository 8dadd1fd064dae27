"""lmcor.data.host_shard (which examples each host reads) and lmcor.cli.distributed (joining a
multi-host job).

The multi-host tests run 2 and 4 real local processes (gloo collectives on CPU) over the real
WMT22 source lines; every subprocess is time-bound so a hung coordinator fails the test
instead of hanging CI.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import free_port
from lmcor.cli import distributed
from lmcor.data.host_shard import host_shard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "_multihost_worker.py")
JOB_TIMEOUT_S = 120


def _wmt22_lines(data_dir):
    path = data_dir / "wmt_en_de" / "wmt22" / "source.en"
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    return path, lines[:-1] if text.endswith("\n") else lines


def _spawn_job(n: int, text_file, out_dir):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per host
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_COORDINATOR_ADDRESS"] = f"127.0.0.1:{free_port()}"
    env["JAX_NUM_PROCESSES"] = str(n)
    procs = []
    for i in range(n):
        env_i = dict(env, JAX_PROCESS_ID=str(i))
        procs.append(subprocess.Popen(
            [sys.executable, WORKER, str(text_file), str(out_dir)], env=env_i,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True))
    return procs


def _wait_all(procs):
    """(returncode, stderr) per process; kills the whole job when the deadline passes."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    results = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((p.returncode, err))
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        pytest.fail(f"multi-host job did not finish within {JOB_TIMEOUT_S}s")
    return results


@pytest.mark.slow
@pytest.mark.parametrize("n_hosts", [2, 4])
def test_every_example_read_by_exactly_one_host(n_hosts, data_dir, tmp_path):
    text_file, lines = _wmt22_lines(data_dir)
    results = _wait_all(_spawn_job(n_hosts, text_file, tmp_path))
    for i, (code, err) in enumerate(results):
        assert code == 0, f"host {i} exited {code}:\n{err[-3000:]}"
    hosts = [json.loads((tmp_path / f"host{i}.json").read_text()) for i in range(n_hosts)]

    assert [h["process_index"] for h in hosts] == list(range(n_hosts))
    assert all(h["process_count"] == n_hosts for h in hosts)
    assert [h["is_main_host"] for h in hosts] == [True] + [False] * (n_hosts - 1)
    read = [i for h in hosts for i in h["ids"]]
    assert len(read) == len(set(read)), "some example was read by more than one host"
    assert sorted(read) == list(range(len(lines))) == list(range(2037))
    # Each host's character count must match the lines it claims, read independently here.
    for h in hosts:
        assert h["local_chars"] == sum(len(lines[i]) for i in h["ids"])

    # Collectives: every host sees every host's count, and the jitted cross-process sum equals
    # the total computed in a single process.
    counts = [len(h["ids"]) for h in hosts]
    total = sum(len(line) for line in lines)
    for h in hosts:
        assert h["allgather_counts"] == counts
        assert h["global_chars"] == total

    # Info-level logs come from host 0 only; warnings still come from every host.
    for i, (_, err) in enumerate(results):
        assert ("info-from-host-%d" % i in err) == (i == 0)
        assert "warning-from-host-%d" % i in err


def test_host_shard_of_a_count_partitions_indices():
    for count in (1, 2, 3, 4):
        shards = [list(host_shard(10, i, count)) for i in range(count)]
        assert sorted(x for s in shards for x in s) == list(range(10))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert list(host_shard(10, 1, 4)) == [1, 5, 9]
    assert list(host_shard(0, 0, 2)) == []


def test_host_shard_of_an_iterable_streams_round_robin():
    def stream():
        yield from "abcdefg"

    assert list(host_shard(stream(), 0, 3)) == ["a", "d", "g"]
    assert list(host_shard(stream(), 2, 3)) == ["c", "f"]


def test_host_shard_of_tf_data_matches_count_split():
    tf = pytest.importorskip("tensorflow")
    ds = tf.data.Dataset.range(11)
    for i in range(4):
        got = [int(x) for x in host_shard(ds, i, 4).as_numpy_iterator()]
        assert got == list(host_shard(11, i, 4))


def test_host_shard_defaults_to_this_process():
    assert list(host_shard(3)) == [0, 1, 2]  # one process here


@pytest.mark.parametrize("index,count", [(2, 2), (-1, 2), (0, 0)])
def test_host_shard_rejects_bad_index(index, count):
    with pytest.raises(ValueError, match="process_index"):
        host_shard(5, index, count)


@pytest.fixture
def clean_env(monkeypatch):
    for name in (distributed.ENV_ADDRESS, distributed.ENV_COUNT, distributed.ENV_ID,
                 "SLURM_NTASKS", "SLURM_STEP_NODELIST", "OMPI_MCA_orte_hnp_uri"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "_state", None)
    return monkeypatch


def test_initialize_without_a_cluster_is_single_process_and_idempotent(clean_env):
    first = distributed.initialize()
    assert first == distributed.HostInfo(0, 1, None)
    assert distributed.initialize() is first


def test_initialize_one_process_from_env_needs_no_coordinator(clean_env):
    clean_env.setenv(distributed.ENV_COUNT, "1")
    assert distributed.initialize() == distributed.HostInfo(0, 1, None)


def test_initialize_names_missing_settings(clean_env):
    clean_env.setenv(distributed.ENV_COUNT, "4")
    with pytest.raises(ValueError, match="coordinator_address, process_id missing"):
        distributed.initialize()
    with pytest.raises(ValueError, match="outside 0..3"):
        distributed.initialize("127.0.0.1:1234", process_id=4)
    clean_env.setenv(distributed.ENV_ID, "x")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID='x'"):
        distributed.initialize()


def test_partial_settings_are_left_to_a_detectable_cluster(clean_env):
    # Under `srun`, JAX reads the rest from SLURM; only the explicit part is passed on.
    clean_env.setenv("SLURM_STEP_NODELIST", "gpu[01-02]")
    clean_env.setenv(distributed.ENV_ADDRESS, "gpu01:9999")
    clean_env.setenv("SLURM_NTASKS", "1")  # a one-task step is no cluster: refuse to guess
    with pytest.raises(ValueError, match="num_processes, process_id missing"):
        distributed._explicit_settings(None, None, None)
    clean_env.setenv("SLURM_NTASKS", "2")
    assert distributed._explicit_settings(None, None, None) == {"coordinator_address": "gpu01:9999"}


def test_split_distributed_flags():
    kwargs, rest = distributed.split_distributed_flags(
        ["--gin_file=a.gin", "--coordinator_address=10.0.0.1:8476", "--num_processes", "4",
         "--process_id=3", "--steps=5"])
    assert kwargs == {"coordinator_address": "10.0.0.1:8476", "num_processes": 4, "process_id": 3}
    assert rest == ["--gin_file=a.gin", "--steps=5"]
    with pytest.raises(ValueError, match="--process_id='a'"):
        distributed.split_distributed_flags(["--process_id=a"])


def test_main_host_filter_silences_info_on_other_hosts():
    import logging

    def record(level):
        return logging.LogRecord("lmcor.x", level, __file__, 1, "m", None, None)

    assert distributed.MainHostFilter(0).filter(record(logging.INFO))
    assert not distributed.MainHostFilter(1).filter(record(logging.INFO))
    assert distributed.MainHostFilter(1).filter(record(logging.WARNING))
