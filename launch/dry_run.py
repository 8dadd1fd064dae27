"""Renders (and with --exec runs) the per-host `lmcor` command of a multi-host job.

Both launchers go through here, so the command a dry run prints is the command that runs:

  slurm  one line per SLURM task: JAX_COORDINATOR_ADDRESS (first host of the job's nodelist),
         JAX_NUM_PROCESSES (SLURM_NTASKS), JAX_PROCESS_ID (SLURM_PROCID) and, with one process
         per GPU, CUDA_VISIBLE_DEVICES. `--exec` (inside `srun`) execs this task's command.
  tpu    one `gcloud compute tpus tpu-vm ssh --worker=I` line per TPU VM worker, each setting the
         same coordinator (worker 0) and its own process id. `--exec` runs them all in parallel.

Standard library only: it runs on login nodes and laptops without the project installed.
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
import time

TPU_COORDINATOR_PORT = 8476  # the port JAX uses on TPU pods


class LaunchError(ValueError):
    pass


def expand_hostlist(nodelist: str) -> list[str]:
    """SLURM's compressed host list ('gpu[01-03,07],login1') as `scontrol show hostnames` does."""
    hosts = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", nodelist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                raise LaunchError(f"cannot parse SLURM node list {nodelist!r} near {part!r}")
            width = len(lo)
            hosts.extend(f"{prefix}{i:0{width}d}" for i in range(int(lo), int(hi or lo) + 1))
    if not hosts:
        raise LaunchError(f"SLURM node list {nodelist!r} names no host")
    return hosts


def render(env: dict, command: list[str], args: list[str]) -> str:
    """One shell line; `env K=V` keeps it a single argv so quoting is shlex's job alone."""
    return shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), *command, *args])


def _require(environ, name: str) -> str:
    value = environ.get(name)
    if not value:
        raise LaunchError(f"{name} is not set (run inside a SLURM allocation, or set it for a dry run)")
    return value


def _int_var(environ, name: str) -> int:
    raw = _require(environ, name)
    if not raw.isdigit():
        raise LaunchError(f"{name}={raw!r} is not a non-negative integer")
    return int(raw)


def slurm_job(environ, coordinator_host: str | None = None):
    """(coordinator address, hosts, tasks per node, one process per 'gpu'|'node')."""
    hosts = expand_hostlist(_require(environ, "SLURM_JOB_NODELIST"))
    ntasks = _int_var(environ, "SLURM_NTASKS")
    if ntasks % len(hosts):
        raise LaunchError(f"SLURM_NTASKS={ntasks} is not a multiple of the {len(hosts)} nodes")
    per = environ.get("LMCOR_PROCESS_PER", "gpu")
    if per not in ("gpu", "node"):
        raise LaunchError(f"LMCOR_PROCESS_PER={per!r}: expected 'gpu' or 'node'")
    per_node = ntasks // len(hosts)
    if per == "node" and per_node != 1:
        raise LaunchError(f"LMCOR_PROCESS_PER=node needs one task per node, got {per_node}")
    port = environ.get("LMCOR_COORDINATOR_PORT") or str(20000 + int(environ.get("SLURM_JOB_ID", "0") or 0) % 20000)
    return f"{coordinator_host or hosts[0]}:{port}", hosts, per_node, per


def slurm_task_env(address: str, ntasks: int, procid: int, localid: int, per: str, environ) -> dict:
    env = {"JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": str(ntasks),
           "JAX_PROCESS_ID": str(procid)}
    if per == "gpu":
        visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
        # SLURM may already have bound one GPU to the task (--gpus-per-task=1); otherwise the
        # task takes the local GPU matching its rank on the node.
        if len(visible) != 1:
            env["CUDA_VISIBLE_DEVICES"] = visible[localid] if localid < len(visible) else str(localid)
    return env


def slurm_lines(environ, command, args, coordinator_host=None) -> list[str]:
    address, hosts, per_node, per = slurm_job(environ, coordinator_host)
    ntasks = len(hosts) * per_node
    # The submitting shell's GPUs are not the tasks' GPUs: simulate tasks that see all of theirs.
    environ = {k: v for k, v in environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    lines = []
    for procid in range(ntasks):
        # SLURM's default block distribution: tasks fill a node before the next one.
        host, localid = hosts[procid // per_node], procid % per_node
        lines.append(f"# task {procid} of {ntasks} on {host} (local {localid})")
        lines.append(render(slurm_task_env(address, ntasks, procid, localid, per, environ), command, args))
    return lines


def slurm_exec(environ, command, args, coordinator_host=None):
    address, _, _, per = slurm_job(environ, coordinator_host)
    procid, localid = _int_var(environ, "SLURM_PROCID"), _int_var(environ, "SLURM_LOCALID")
    env = slurm_task_env(address, _int_var(environ, "SLURM_NTASKS"), procid, localid, per, environ)
    os.execvpe(command[0], command + args, {**environ, **env})


def tpu_lines(opts, command, args) -> list[str]:
    if opts.num_workers < 1:
        raise LaunchError(f"--num_workers must be >= 1, got {opts.num_workers}")
    lines = []
    for worker in range(opts.num_workers):
        env = dict(kv.split("=", 1) for kv in opts.env)
        env.update(JAX_COORDINATOR_ADDRESS=f"{opts.coordinator_ip}:{opts.port}",
                   JAX_NUM_PROCESSES=str(opts.num_workers), JAX_PROCESS_ID=str(worker))
        remote = f"cd {shlex.quote(opts.workdir)} && {render(env, command, args)}"
        ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", opts.tpu, f"--zone={opts.zone}"]
        ssh += [f"--project={opts.project}"] if opts.project else []
        lines.append(f"# worker {worker} of {opts.num_workers}")
        lines.append(shlex.join(ssh + [f"--worker={worker}", f"--command={remote}"]))
    return lines


def run_parallel(lines: list[str]) -> int:
    """Runs every command at once; the first failure stops the rest (they would wait forever)."""
    procs = [subprocess.Popen(shlex.split(line)) for line in lines if not line.startswith("#")]
    while True:
        codes = [p.poll() for p in procs]
        failed = next((c for c in codes if c not in (None, 0)), None)
        if failed is not None or all(c == 0 for c in codes):
            break
        time.sleep(1)
    for p in procs:
        if p.poll() is None:
            p.terminate()
            p.wait()
    return failed or 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("launcher", choices=("slurm", "tpu"))
    parser.add_argument("--exec", action="store_true", help="run instead of printing")
    parser.add_argument("--lmcor_cmd", default=os.environ.get("LMCOR_CMD", "lmcor"),
                        help="how a host starts lmcor, e.g. '.venv/bin/lmcor'")
    parser.add_argument("--coordinator_host", help="slurm: first host, as scontrol lists it")
    parser.add_argument("--tpu")
    parser.add_argument("--zone")
    parser.add_argument("--project")
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--coordinator_ip", default="WORKER0_IP")
    parser.add_argument("--port", type=int, default=TPU_COORDINATOR_PORT)
    parser.add_argument("--workdir", default="lmcor", help="tpu: checkout on each worker")
    parser.add_argument("--env", action="append", default=[], help="tpu: K=V for every worker")
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    opts, args = _parser().parse_args(argv[:split]), argv[split + 1:]
    command = shlex.split(opts.lmcor_cmd)
    try:
        if opts.launcher == "slurm":
            if opts.exec:
                slurm_exec(dict(os.environ), command, args, opts.coordinator_host)
            lines = slurm_lines(os.environ, command, args, opts.coordinator_host)
        else:
            bad = [kv for kv in opts.env if "=" not in kv]
            if not (opts.tpu and opts.zone) or bad:
                raise LaunchError(f"tpu needs --tpu and --zone, and --env as K=V (bad: {bad})")
            lines = tpu_lines(opts, command, args)
            if opts.exec:
                return run_parallel(lines)
    except LaunchError as e:
        print(f"launch: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
