"""Prometheus text-format metrics of `lmcor serve`: requests by status, latency and batch-size
histograms, upstream errors and retries, in-flight requests, compiled decode executables."""
import threading
from typing import Callable, List

# The corrector's row counts, from a module that imports no JAX: /metrics answers while the
# server is still loading the corrector.
from lmcor.inference.settings import row_buckets

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Counters and histograms rendered in the Prometheus text exposition format."""

    def __init__(self, max_batch: int, executables: Callable[[], int] = lambda: 0,
                 upstream_retries: Callable[[], int] = lambda: 0,
                 upstream_batch_max: Callable[[], int] = lambda: 0):
        self.lock = threading.Lock()
        # Read when rendered: the corrector and the upstream keep these counts themselves.
        self.executables, self.upstream_retries = executables, upstream_retries
        self.upstream_batch_max = upstream_batch_max
        self.requests = {}  # (endpoint, status) -> count
        self.upstream_errors = {}  # reason -> count
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.batch_edges = row_buckets(max_batch)
        self.batches = [0] * len(self.batch_edges)
        self.batch_rows, self.batch_max = 0, 0
        self.inflight = 0

    def request(self, endpoint: str, status: int, seconds: float):
        with self.lock:
            key = (endpoint, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.latency[_bin(seconds, LATENCY_BUCKETS)] += 1
            self.latency_sum += seconds

    def batch(self, size: int):
        with self.lock:
            self.batches[_bin(size, self.batch_edges)] += 1
            self.batch_rows += size
            self.batch_max = max(self.batch_max, size)

    def upstream_error(self, reason: str):
        with self.lock:
            self.upstream_errors[reason] = self.upstream_errors.get(reason, 0) + 1

    def render(self) -> str:
        with self.lock:
            out = ["# HELP lmcor_requests_total Requests by endpoint and HTTP status.",
                   "# TYPE lmcor_requests_total counter"]
            out += [f'lmcor_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                    for (e, s), n in sorted(self.requests.items())]
            out += _histogram("lmcor_request_latency_seconds", "Request latency.",
                              LATENCY_BUCKETS, self.latency, self.latency_sum)
            out += _histogram("lmcor_batch_size", "Requests decoded per corrector call.",
                              self.batch_edges, self.batches + [0], self.batch_rows)
            out += ["# HELP lmcor_batch_size_max Largest batch decoded so far.",
                    "# TYPE lmcor_batch_size_max gauge", f"lmcor_batch_size_max {self.batch_max}",
                    "# HELP lmcor_upstream_errors_total Upstream failures by reason.",
                    "# TYPE lmcor_upstream_errors_total counter"]
            out += [f'lmcor_upstream_errors_total{{reason="{r}"}} {n}'
                    for r, n in sorted(self.upstream_errors.items())]
            out += ["# HELP lmcor_upstream_retries_total Upstream calls repeated after the "
                    "upstream dropped the connection.",
                    "# TYPE lmcor_upstream_retries_total counter",
                    f"lmcor_upstream_retries_total {self.upstream_retries()}",
                    "# HELP lmcor_upstream_batch_size_max Most requests the in-process upstream "
                    "(jax:gguf) sampled in one call so far; 0 for an HTTP upstream.",
                    "# TYPE lmcor_upstream_batch_size_max gauge",
                    f"lmcor_upstream_batch_size_max {self.upstream_batch_max()}",
                    "# HELP lmcor_inflight_requests Requests being handled now.",
                    "# TYPE lmcor_inflight_requests gauge", f"lmcor_inflight_requests {self.inflight}",
                    "# HELP lmcor_decode_executables Compiled corrector decode shapes (growth "
                    "after the background warm-up means compiling while serving).",
                    "# TYPE lmcor_decode_executables gauge",
                    f"lmcor_decode_executables {self.executables()}"]
        return "\n".join(out) + "\n"


def _bin(value: float, edges) -> int:
    return next((i for i, edge in enumerate(edges) if value <= edge), len(edges))


def _histogram(name: str, help_text: str, edges, counts, total) -> List[str]:
    lines, running = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"], 0
    for edge, count in zip(edges, counts):
        running += count
        lines.append(f'{name}_bucket{{le="{edge}"}} {running}')
    running += counts[len(edges)]
    lines += [f'{name}_bucket{{le="+Inf"}} {running}', f"{name}_sum {total}",
              f"{name}_count {running}"]
    return lines
