"""`lmcor sample`: few-shot prompt an LLM for a candidate pool (lmcor.sampling.job).

    lmcor sample --gin_file=gin/runs/sample.gin --gin_file=gin/tasks/sampling/e2e.gin \
        --gin.OUTPUT_DIR=pools/e2e_test [--coordinator_address=host:port ...]

Prints the manifest's status, counts and speed as one JSON object; exits 1 when the pool is not
complete (a rerun resumes it).
"""
import json
import logging
import os
import sys
from typing import Optional, Sequence

from lmcor import cli
from lmcor.cli import distributed, gin_flags
from lmcor.cli.command_errors import report_error
from lmcor.cli.gin_command import GinFlags
from lmcor.data.pool_schema import PoolError
from lmcor.sampling.backends.base import BackendError
from lmcor.sampling.job import SampleError, sample_pool


def _host_settings(kwargs: dict) -> dict:
    """sample_pool's host arguments from the distributed flags (or their environment)."""
    if kwargs or os.environ.get(distributed.ENV_COUNT):
        info = distributed.initialize(**kwargs)
        return {"process_index": info.process_index, "process_count": info.process_count}
    return {}


def _main(flags: GinFlags) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        hosts = _host_settings(flags.distributed)
        gin_flags.parse_gin(flags.files, flags.bindings)
        summary = sample_pool(**hosts)
    except (SampleError, PoolError, BackendError, ValueError, FileNotFoundError) as e:
        return report_error("lmcor sample", e)
    print(json.dumps({k: summary[k] for k in ("status", "counts", "backend_stats",
                                              "wall_s_this_run", "tokens_per_s_this_run")}))
    return 0 if summary["status"] == "complete" or hosts.get("process_count", 1) > 1 else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.run_gin_command("sample", sys.argv[1:] if argv is None else argv, _main)
