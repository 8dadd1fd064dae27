"""Multi-host start-up: one `initialize()` call turns a command into a multi-host JAX job.

Where the process learns its place in the job, first match wins:
  1. arguments (e.g. from `--coordinator_address/--num_processes/--process_id`, see
     `split_distributed_flags`);
  2. the environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (what
     launch/slurm_gpu.sbatch and launch/tpu.sh export);
  3. a cluster JAX detects by itself: SLURM (`srun lmcor ...`: SLURM_PROCID, SLURM_NTASKS,
     first host of SLURM_STEP_NODELIST), Open MPI, or a Cloud TPU VM (worker metadata);
  4. none of these: a single process, and `initialize` changes nothing.

Which examples each host then reads is lmcor.data.host_shard's. The library never calls this
module: a command joins the job before it starts the work, and the work asks JAX
(`jax.process_index()`) where it runs.

jax is imported inside the functions: the flag helpers need none of it, and commands import this
module before deciding whether they run multi-host at all.
"""
import dataclasses
import logging
import os
from typing import Sequence

log = logging.getLogger(__name__)

ENV_ADDRESS, ENV_COUNT, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
FLAG_NAMES = ("coordinator_address", "num_processes", "process_id")


@dataclasses.dataclass(frozen=True)
class HostInfo:
    process_index: int
    process_count: int
    coordinator_address: str | None


_state: HostInfo | None = None


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _explicit_settings(coordinator_address, num_processes, process_id) -> dict:
    """The settings given as arguments or JAX_* variables (arguments win), field by field."""
    address = coordinator_address or os.environ.get(ENV_ADDRESS) or None
    count = num_processes if num_processes is not None else _env_int(ENV_COUNT)
    index = process_id if process_id is not None else _env_int(ENV_ID)
    given = {"coordinator_address": address, "num_processes": count, "process_id": index}
    missing = [k for k, v in given.items() if v is None]
    single = count == 1 and index in (None, 0)  # a one-process job needs no coordinator
    # A partial setting is fine where JAX can detect the rest (e.g. only the port is overridden
    # under SLURM); anywhere else it would hang or fail deep inside JAX, so say what is missing.
    if missing and len(missing) < 3 and not single and not _cluster_detectable():
        raise ValueError(
            f"multi-host settings incomplete: {', '.join(missing)} missing (set them as flags "
            f"or as {ENV_ADDRESS}/{ENV_COUNT}/{ENV_ID}); got {given}")
    if count is not None and index is not None and not 0 <= index < count:
        raise ValueError(f"process_id={index} is outside 0..{count - 1} (num_processes={count})")
    return {k: v for k, v in given.items() if v is not None}


def _on_tpu_vm() -> bool:
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None and not os.environ.get("TPU_SKIP_MDS_QUERY")


def _cluster_detectable() -> bool:
    """Whether jax.distributed can find the job by itself: an `srun` step, `mpirun`, a TPU VM."""
    # A one-task SLURM step (`srun --pty bash`, a one-GPU job) is a single process: joining a
    # "cluster" there would only start a coordinator that nobody else connects to.
    slurm = "SLURM_STEP_NODELIST" in os.environ and os.environ.get("SLURM_NTASKS", "1") != "1"
    return slurm or "OMPI_MCA_orte_hnp_uri" in os.environ or _on_tpu_vm()


def _use_gloo_on_cpu() -> None:
    import jax

    # Without a CPU collectives backend, a computation spanning processes fails on CPU; gloo
    # is what lets two local processes (tests, laptops) stand in for a cluster.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_s: int = 300) -> HostInfo:
    """Joins the multi-host job (see the module docstring); safe to call more than once."""
    global _state
    import jax

    if _state is not None:
        return _state
    if jax.distributed.is_initialized():  # someone called jax.distributed directly
        _state = HostInfo(jax.process_index(), jax.process_count(), None)
        return _finish(_state)
    settings = _explicit_settings(coordinator_address, num_processes, process_id)
    if settings.get("num_processes") == 1 or not (settings or _cluster_detectable()):
        _state = HostInfo(0, 1, None)
        return _state
    _use_gloo_on_cpu()
    jax.distributed.initialize(**settings, initialization_timeout=timeout_s)
    _state = HostInfo(jax.process_index(), jax.process_count(), settings.get("coordinator_address"))
    return _finish(_state)


def _finish(info: HostInfo) -> HostInfo:
    import jax

    install_log_filter(info.process_index)
    log.info("joined multi-host job: process %d of %d, %d local / %d global devices",
             info.process_index, info.process_count, jax.local_device_count(), jax.device_count())
    return info


def _jax_process_index() -> int:
    import jax

    return jax.process_index()


def _jax_process_count() -> int:
    import jax

    return jax.process_count()


def is_main_host() -> bool:
    """True on the host that writes summaries, reports and logs (process 0)."""
    return _jax_process_index() == 0


class MainHostFilter(logging.Filter):
    """Lets every record through on host 0; elsewhere only warnings and errors.

    N hosts printing the same progress line N times buries the one line that differs, so the
    other hosts stay quiet unless something goes wrong on them.
    """

    def __init__(self, process_index: int):
        super().__init__()
        self.process_index = process_index

    def filter(self, record: logging.LogRecord) -> bool:
        return self.process_index == 0 or record.levelno >= logging.WARNING


def install_log_filter(process_index: int) -> None:
    """Applies `MainHostFilter` to lmcor's loggers and to the handlers present now."""
    if process_index == 0:
        return
    # Child loggers ("lmcor.train") inherit this level unless they set their own; the handler
    # filters also catch records of other libraries (absl, orbax) that reach the root logger.
    logging.getLogger("lmcor").setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, MainHostFilter) for f in handler.filters):
            handler.addFilter(MainHostFilter(process_index))


def split_distributed_flags(argv: Sequence[str]):
    """Pulls `--coordinator_address=`, `--num_processes=`, `--process_id=` out of argv.

    Returns (kwargs for `initialize`, remaining argv), so a command's `main(argv)` can accept
    the flags without its own parser knowing about them.
    """
    kwargs, rest = {}, []
    it = iter(argv)
    for arg in it:
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name not in FLAG_NAMES:
            rest.append(arg)
            continue
        if not eq:
            value = next(it, None)
            if value is None:
                raise ValueError(f"flag --{name} needs a value")
        kwargs[name] = value if name == "coordinator_address" else _flag_int(name, value)
    return kwargs, rest


def _flag_int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"flag --{name}={value!r} is not an integer") from None
