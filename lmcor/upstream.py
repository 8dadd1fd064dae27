"""The LLM behind `lmcor serve`: an OpenAI-compatible endpoint (through the sampling job's
HTTP client) or Gemma 3 from a GGUF file run in-process. Failures become `ApiError`s carrying the
HTTP status the proxy answers with: connection refused / 5xx -> 502, timeout -> 504, 4xx kept.

A connection the upstream refused, reset or closed without a reply is tried again (up to
`connect_retries` times, with jittered backoff) before it becomes a 502: nothing was generated,
so repeating is safe, and a burst of new connections (every request of a finished micro-batch
asks upstream for its next pool at once) overflows a small listen backlog, which drops some.
Timeouts are not repeated: the client is already waiting."""
import threading
import time
from typing import Optional

from lmcor.backends.base import BackendError, Request, SamplingParams


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
        self.connection_retries = 0  # done so far (the server's /metrics shows it)
        self.backends, self.lock = {}, threading.Lock()

    def _backend(self, mode: str, model: str):
        from lmcor.backends.http import HttpBackend
        with self.lock:
            key = (mode, self.model or model)
            if key not in self.backends:
                self.backends[key] = HttpBackend(
                    base_url=self.base_url, model=key[1], mode=mode, concurrency=2,
                    api_key_env=self.api_key_env, timeout_s=self.timeout_s,
                    max_retries=self.retries)
            return self.backends[key]

    def generate(self, mode: str, model: str, request: Request, params: SamplingParams):
        from lmcor.backends.http import HttpBackendError
        backend = self._backend(mode, model)
        attempt = 0
        while True:
            try:
                return backend.generator, backend.generate([request], params)[0]
            except HttpBackendError as e:
                if e.reason != "connection" or attempt >= self.connect_retries:
                    raise _upstream_api_error(e.reason or "error", e.status, str(e)) from None
            with self.lock:
                self.connection_retries += 1
            time.sleep(backend._backoff(attempt, None))  # the backend's jittered backoff
            attempt += 1


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


class JaxUpstream:
    """Gemma 3 from a GGUF file, run in this process (one generation at a time)."""

    def __init__(self, gguf_path: str):
        from lmcor.backends.jax_lm import JaxBackend
        self.backend, self.lock = JaxBackend(checkpoint=gguf_path, batch_size=1), threading.Lock()

    def generate(self, mode: str, model: str, request: Request, params: SamplingParams):
        with self.lock:
            try:
                return self.backend.generator, self.backend.generate([request], params)[0]
            except BackendError as e:
                raise ApiError(502, f"upstream failed: {e}", "upstream_error") from None


def make_upstream(spec: str, model: Optional[str], timeout_s: float, retries: int,
                  api_key_env: Optional[str], connect_retries: int = 3):
    if spec.startswith("jax:gguf:"):
        return JaxUpstream(spec[len("jax:gguf:"):])
    if spec.startswith(("http://", "https://")):
        return HttpUpstream(spec, model, timeout_s, retries, api_key_env, connect_retries)
    raise ValueError(f"--upstream={spec!r}: expected an http(s):// base URL or jax:gguf:PATH")
