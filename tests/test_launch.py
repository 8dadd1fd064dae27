"""launch/: the per-host commands of the TPU and SLURM launchers, dry and (with stand-ins for
gcloud and srun, which do not exist here) real."""
import importlib.util
import json
import os
import pathlib
import re
import shlex
import socket
import stat
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_SH = os.path.join(REPO, "launch", "tpu.sh")
SBATCH = os.path.join(REPO, "launch", "slurm_gpu.sbatch")
_spec = importlib.util.spec_from_file_location("launch_dry_run", os.path.join(REPO, "launch", "dry_run.py"))
dry_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dry_run)

# Spaces, quotes, a shell variable and a separator must all reach lmcor unchanged.
LMCOR_ARGS = ["train", "--gin_file=gin/runs/my run.gin", "--gin.MODEL_DIR='/shared/my runs/a'",
              'it"s', "$HOME", "a;b", "--steps=3"]


def _run(cmd, env=None, timeout=60):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LMCOR_", "JAX_", "CUDA_VISIBLE"))}
    full_env.update(LMCOR_PYTHON=sys.executable, **(env or {}))
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)


def _split_env(tokens):
    """['env', 'K=V', ..., cmd, args...] -> ({K: V}, [cmd, args...])."""
    assert tokens[0] == "env", tokens
    env, i = {}, 1
    while re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[i]):
        key, value = tokens[i].split("=", 1)
        env[key] = value
        i += 1
    return env, tokens[i:]


def _commands(stdout):
    return [line for line in stdout.splitlines() if line and not line.startswith("#")]


def _slurm_dry(n_nodes, per_node=1, extra=None):
    env = {"SLURM_JOB_NODELIST": f"node[01-{n_nodes:02d}]", "SLURM_NTASKS": str(n_nodes * per_node),
           "SLURM_JOB_ID": "4242", "LMCOR_PROCESS_PER": "node" if per_node == 1 else "gpu",
           "LMCOR_CMD": "lmcor", **(extra or {})}
    out = _run(["bash", SBATCH, "--dry_run", *LMCOR_ARGS], env)
    assert out.returncode == 0, out.stderr
    return [_split_env(shlex.split(line)) for line in _commands(out.stdout)]


def _tpu_dry(n_workers):
    out = _run(["bash", TPU_SH, "--tpu=my tpu", "--zone=us-central2-b", "--dry_run",
                f"--num_workers={n_workers}", "--coordinator_ip=10.0.0.2", "--env=XLA_FLAGS=--a --b",
                "--", *LMCOR_ARGS])
    assert out.returncode == 0, out.stderr
    hosts = []
    for line in _commands(out.stdout):
        outer = shlex.split(line)
        assert outer[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my tpu"]
        worker = int(next(t for t in outer if t.startswith("--worker=")).split("=")[1])
        remote = shlex.split(next(t for t in outer if t.startswith("--command=")).split("=", 1)[1])
        assert remote[:3] == ["cd", "lmcor", "&&"]
        env, cmd = _split_env(remote[3:])
        assert env["JAX_PROCESS_ID"] == str(worker)
        assert env["XLA_FLAGS"] == "--a --b"
        hosts.append((env, cmd))
    return hosts


def _check_job(hosts, n, coordinator, lmcor):
    assert len(hosts) == n
    assert sorted(int(env["JAX_PROCESS_ID"]) for env, _ in hosts) == list(range(n))
    assert {env["JAX_COORDINATOR_ADDRESS"] for env, _ in hosts} == {coordinator}
    assert {env["JAX_NUM_PROCESSES"] for env, _ in hosts} == {str(n)}
    for _, cmd in hosts:
        assert cmd == [lmcor, *LMCOR_ARGS]


@pytest.mark.parametrize("n", [1, 2, 4])
def test_slurm_dry_run_one_process_per_node(n):
    hosts = _slurm_dry(n)
    _check_job(hosts, n, "node01:24242", "lmcor")
    assert all("CUDA_VISIBLE_DEVICES" not in env for env, _ in hosts)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_tpu_dry_run(n):
    _check_job(_tpu_dry(n), n, "10.0.0.2:8476", ".venv/bin/lmcor")


def test_slurm_dry_run_one_process_per_gpu():
    hosts = _slurm_dry(2, per_node=8, extra={"LMCOR_COORDINATOR_PORT": "9999"})
    _check_job(hosts, 16, "node01:9999", "lmcor")
    gpus = [env["CUDA_VISIBLE_DEVICES"] for env, _ in sorted(hosts, key=lambda h: int(h[0]["JAX_PROCESS_ID"]))]
    assert gpus == [str(i) for i in range(8)] * 2


def test_tpu_dry_run_prints_create_and_setup():
    out = _run(["bash", TPU_SH, "--tpu=t", "--zone=z", "--project=p", "--create",
                "--accelerator_type=v4-32", "--setup", "--dry_run", "sample", "--x=1"])
    assert out.returncode == 0, out.stderr
    lines = _commands(out.stdout)
    assert shlex.split(lines[0]) == ["gcloud", "compute", "tpus", "tpu-vm", "create", "t", "--zone=z",
                                     "--project=p", "--accelerator-type=v4-32",
                                     "--version=tpu-ubuntu2204-base"]
    assert any("--worker=all" in shlex.split(line) for line in lines)


@pytest.mark.parametrize("cmd,env,message", [
    (["bash", TPU_SH, "--zone=z", "--dry_run", "train"], {}, "--tpu=NAME and --zone=ZONE"),
    (["bash", TPU_SH, "--tpu=t", "--zone=z", "--bogus", "train"], {}, "unknown flag --bogus"),
    (["bash", SBATCH, "--dry_run", "train"], {}, "SLURM_JOB_NODELIST is not set"),
    (["bash", SBATCH, "--dry_run", "train"], {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NTASKS": "3"},
     "not a multiple of the 2 nodes"),
])
def test_launchers_reject_bad_input(cmd, env, message):
    out = _run(cmd, env)
    assert out.returncode != 0
    assert message in out.stderr


def test_expand_hostlist_matches_scontrol_format():
    assert dry_run.expand_hostlist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert dry_run.expand_hostlist("a-b[8-10],c[9]") == ["a-b8", "a-b9", "a-b10", "c9"]
    with pytest.raises(dry_run.LaunchError, match="near 'x-y'"):
        dry_run.expand_hostlist("n[x-y]")


# ---- real mode, with stand-ins for the cluster tools --------------------------------------

FAKE_LMCOR = """#!{python}
import json, os, sys
keys = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "CUDA_VISIBLE_DEVICES")
record = {{"env": {{k: os.environ[k] for k in keys if k in os.environ}}, "args": sys.argv[1:]}}
with open(os.path.join(os.environ["LAUNCH_OUT"], os.environ["JAX_PROCESS_ID"] + ".json"), "w") as f:
    json.dump(record, f)
"""
FAKE_GCLOUD = """#!/usr/bin/env bash
# gcloud stand-in: `describe` lists 3 worker IPs, `ssh --command=C` runs C here, from $FAKE_HOME.
if [[ "$4" == describe ]]; then echo "10.9.0.1;10.9.0.2;10.9.0.3"; exit 0; fi
for a in "$@"; do [[ "$a" == --command=* ]] && cmd="${a#--command=}"; done
cd "$FAKE_HOME" && exec bash -c "$cmd"
"""
FAKE_SRUN = """#!/usr/bin/env bash
# srun stand-in: starts SLURM_NTASKS copies with SLURM_PROCID/SLURM_LOCALID, 2 tasks per node.
shift
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i SLURM_LOCALID=$((i % 2)) "$@" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done
"""


def _script(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.fixture
def fake_cluster(tmp_path):
    bin_dir, home, out = tmp_path / "bin", tmp_path / "home", tmp_path / "out"
    for d in (bin_dir, home / "lmcor" / ".venv" / "bin", out):
        d.mkdir(parents=True)
    lmcor = _script(home / "lmcor" / ".venv" / "bin" / "lmcor", FAKE_LMCOR.format(python=sys.executable))
    _script(bin_dir / "gcloud", FAKE_GCLOUD)
    _script(bin_dir / "srun", FAKE_SRUN)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_HOME": str(home),
           "LAUNCH_OUT": str(out)}
    return env, lmcor, out


def _launched(out):
    return [(r["env"], ["lmcor", *r["args"]]) for r in
            (json.loads(p.read_text()) for p in sorted(out.iterdir()))]


def test_tpu_real_run_matches_dry_run(fake_cluster):
    env, _, out = fake_cluster
    ran = _run(["bash", TPU_SH, "--tpu=t", "--zone=z", *LMCOR_ARGS], env)
    assert ran.returncode == 0, ran.stderr
    _check_job(_launched(out), 3, "10.9.0.1:8476", "lmcor")


FAILING_LMCOR = """#!{python}
import os, sys, time
if os.environ["JAX_PROCESS_ID"] == "1":
    sys.exit(3)
time.sleep(60)  # the others would wait for the failed host in a collective
"""


def test_tpu_run_stops_every_worker_when_one_fails(fake_cluster):
    env, lmcor, _ = fake_cluster
    _script(pathlib.Path(lmcor), FAILING_LMCOR.format(python=sys.executable))
    ran = _run(["bash", TPU_SH, "--tpu=t", "--zone=z", "train"], env, timeout=30)
    assert ran.returncode == 3


def test_slurm_real_run_matches_dry_run(fake_cluster):
    env, lmcor, out = fake_cluster
    env.update(SLURM_JOB_NODELIST="gpu[1-2]", SLURM_NTASKS="4", SLURM_JOB_ID="5", LMCOR_CMD=lmcor)
    ran = _run(["bash", SBATCH, *LMCOR_ARGS], env)
    assert ran.returncode == 0, ran.stderr
    launched = _launched(out)
    _check_job(launched, 4, "gpu1:20005", "lmcor")
    dry = _run(["bash", SBATCH, "--dry_run", *LMCOR_ARGS], env)
    expected = [_split_env(shlex.split(line))[0] for line in _commands(dry.stdout)]
    assert [e for e, _ in launched] == expected


@pytest.mark.slow
def test_slurm_launcher_starts_a_real_two_host_job(fake_cluster, data_dir, tmp_path):
    """Launcher -> per-task env -> lmcor.cli.distributed.initialize -> sharded read ->
    collectives."""
    env, _, out = fake_cluster
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = os.path.join(REPO, "tests", "_multihost_worker.py")
    env.update(SLURM_JOB_NODELIST="127.0.0.1", SLURM_NTASKS="2", LMCOR_PROCESS_PER="gpu",
               LMCOR_COORDINATOR_PORT=str(port), LMCOR_CMD=shlex.join([sys.executable, worker]),
               PYTHONPATH=REPO, XLA_FLAGS="")
    source = data_dir / "jfleg" / "dev" / "dev.src"
    ran = _run(["bash", SBATCH, str(source), str(out)], env, timeout=120)
    assert ran.returncode == 0, ran.stderr[-3000:]
    hosts = [json.loads((out / f"host{i}.json").read_text()) for i in range(2)]
    lines = source.read_text(encoding="utf-8").split("\n")[:-1]
    assert sorted(hosts[0]["ids"] + hosts[1]["ids"]) == list(range(len(lines))) == list(range(754))
    assert hosts[0]["global_chars"] == hosts[1]["global_chars"] == sum(map(len, lines))
