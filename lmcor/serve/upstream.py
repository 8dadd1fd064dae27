"""The LLM behind `lmcor serve`: an OpenAI-compatible endpoint (through the sampling job's
HTTP client) or Gemma 3 from a GGUF file run in-process. Failures become `ApiError`s carrying the
HTTP status the proxy answers with: connection refused / 5xx -> 502, timeout -> 504, 4xx kept.

A connection the upstream refused, reset or closed without a reply is tried again (up to
`connect_retries` times, with jittered backoff, by the HTTP client itself) before it becomes a
502: nothing was generated, so repeating is safe, and a burst of new connections (every request
of a finished micro-batch asks upstream for its next pool at once) overflows a small listen
backlog, which drops some. Timeouts are not repeated unless `retries` says so: the client is
already waiting."""
import concurrent.futures
import dataclasses
import os
import threading
import urllib.parse
from typing import Optional

from lmcor.sampling.backends.base import BackendError, Request, SamplingParams
from lmcor.serve.batching import BatchWorker


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class HttpUpstream:
    """Greedy + samples from an OpenAI-compatible endpoint, via the sampling job's client."""

    def __init__(self, base_url: str, model: Optional[str], timeout_s: float, retries: int,
                 api_key_env: Optional[str], connect_retries: int = 3):
        self.base_url, self.model, self.timeout_s = base_url, model, timeout_s
        self.retries, self.api_key_env = retries, api_key_env
        self.connect_retries = connect_retries
        self.backends, self.lock = {}, threading.Lock()

    @property
    def connection_retries(self) -> int:
        """Calls repeated so far after a dropped connection (the server's /metrics)."""
        with self.lock:
            backends = list(self.backends.values())
        return sum(b.stats()["retries_by_reason"].get("connection", 0) for b in backends)

    def load(self):
        """Nothing to load: the endpoint is called per request."""

    def close(self):
        """Nothing to stop: calls run in the requests' own threads."""

    def _backend(self, mode: str, model: str):
        from lmcor.sampling.backends.http import HttpBackend
        with self.lock:
            key = (mode, self.model or model)
            if key not in self.backends:
                self.backends[key] = HttpBackend(
                    base_url=self.base_url, model=key[1], mode=mode, concurrency=2,
                    api_key_env=self.api_key_env, timeout_s=self.timeout_s,
                    max_retries=self.retries, connect_retries=self.connect_retries)
            return self.backends[key]

    def generate(self, mode: str, model: str, request: Request, params: SamplingParams):
        from lmcor.sampling.backends.http import HttpBackendError
        backend = self._backend(mode, model)
        try:
            return backend.generator, backend.generate([request], params)[0]
        except HttpBackendError as e:
            raise _upstream_api_error(e.reason or "error", e.status, str(e)) from None


def _upstream_api_error(reason: str, status: Optional[int], message: str) -> ApiError:
    if reason == "timeout":
        return ApiError(504, f"upstream timed out: {message}", "upstream_timeout")
    if status in (400, 413, 422, 429):
        # The upstream refused what the client asked for (bad parameters, too long, rate limit):
        # the client can act on that, so it gets the same status.
        return ApiError(status, f"upstream refused the request: {message}", "upstream_error")
    # Connection refused, 5xx, malformed replies, and 401/403/404 (the proxy's own credentials
    # or base URL are wrong, not the client's request) are the gateway's problem.
    return ApiError(502, f"upstream failed ({reason}): {message}", "upstream_error")


class JaxUpstream(BatchWorker):
    """Gemma 3 from a GGUF file, run in this process, sampling concurrent requests together.

    Decoding one request at a time would serialise every client behind the model (and leave
    the corrector's micro-batcher nothing to batch), so one thread takes the requests that
    arrive within `max_wait_ms` of the first, up to `max_batch`, and decodes them in one backend
    call per distinct sampling parameters (`max_tokens`, `stop`): every request's greedy output
    and samples in one jitted decode (`shared_prefill`), rows padded to a power of two so that
    few shapes compile; `max_tokens` is rounded up to a power of two for compiling
    (`bucket_new_tokens`), so each client's new value does not compile a decode of its own. A
    batch's samples come from one random stream, seeded by its first request's seed and its
    size, so a request's `seed` reproduces its samples when it is decoded alone, not when it
    shares a batch."""

    def __init__(self, gguf_path: str, max_batch: int = 8, max_wait_ms: float = 10.0):
        from lmcor.sampling.backends.jax_lm import JaxBackend
        self.backend = JaxBackend(checkpoint=gguf_path, batch_size=1, per_example_seed=False,
                                  shared_prefill=True, bucket_new_tokens=True)
        self.batch_max = 0  # most requests decoded in one call so far (the server's /metrics)
        self.lock = threading.Lock()  # the backend is used by one thread at a time
        super().__init__("lmcor-upstream", max_batch, max_wait_ms)

    def load(self):
        """Reads the weights now (server start-up) rather than in the first request."""
        with self.lock:
            self.backend.tokenizer  # noqa: B018  (the property loads the model)

    def close(self):
        self.stop()

    def generate(self, mode: str, model: str, request: Request, params: SamplingParams):
        future = concurrent.futures.Future()
        self.queue.put((request, params, future))
        return self.backend.generator, future.result()

    def group_key(self, item) -> SamplingParams:
        return item[1]

    def handle(self, params: SamplingParams, items: list) -> None:
        self._decode(params, [(request, future) for request, _, future in items])

    def _decode(self, params: SamplingParams, group: list):
        # JaxBackend (per_example_seed=False) seeds a batch from its first request's seed and
        # every request's id: ids by position, not random, keep a lone request reproducible.
        requests = [dataclasses.replace(r, id=str(i)) for i, (r, _) in enumerate(group)]
        rows = min(self.max_batch, 1 << (len(group) - 1).bit_length())
        try:
            with self.lock:
                # Rows per decode call; the backend pads every call to its batch_size.
                self.backend.batch_size = rows
                outs = self.backend.generate(requests, params)
                self.batch_max = max(self.batch_max, len(group))
        except BackendError as e:
            error = ApiError(502, f"upstream failed: {e}", "upstream_error")
            for _, future in group:
                future.set_exception(error)
            return
        except Exception as e:  # a bug answers its requests (500) and keeps the thread alive
            for _, future in group:
                future.set_exception(e)
            return
        for (_, future), gens in zip(group, outs):
            future.set_result(gens)


def check_upstream(spec: str) -> None:
    """Raises ValueError for an --upstream that cannot work, without loading or calling it, so
    the server refuses it before its start-up (loading and compiling the corrector) begins."""
    if spec.startswith("jax:gguf:"):
        from lmcor.checkpoints.bundled import BUNDLED

        path = spec[len("jax:gguf:"):]
        if path != BUNDLED and not os.path.isfile(path):
            raise ValueError(f"--upstream={spec}: {path!r}: no such file (a .gguf file, or "
                             f"{BUNDLED!r})")
        return
    if not spec.startswith(("http://", "https://")):
        raise ValueError(f"--upstream={spec}: expected an http(s):// base URL or jax:gguf:PATH")
    try:
        url = urllib.parse.urlsplit(spec)
        url.port  # noqa: B018  (raises for a port that is not a number in 0-65535)
    except ValueError as e:
        raise ValueError(f"--upstream={spec}: {e}") from None
    if not url.hostname:
        raise ValueError(f"--upstream={spec}: no host in the URL")


def make_upstream(spec: str, model: Optional[str], timeout_s: float, retries: int,
                  api_key_env: Optional[str], connect_retries: int = 3, max_batch: int = 8,
                  max_wait_ms: float = 10.0):
    """`max_batch`/`max_wait_ms`: how the in-process model batches concurrent requests."""
    check_upstream(spec)
    if spec.startswith("jax:gguf:"):
        return JaxUpstream(spec[len("jax:gguf:"):], max_batch, max_wait_ms)
    return HttpUpstream(spec, model, timeout_s, retries, api_key_env, connect_retries)
