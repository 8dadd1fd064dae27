"""Any OpenAI-compatible endpoint (`/v1/completions` or `/v1/chat/completions`) as a backend.

Each request becomes one greedy call (temperature 0) and one call with `n = num_samples`. Calls
run on a bounded thread pool; 429, 5xx, timeouts, connection errors and malformed replies are
retried with capped exponential backoff and full jitter (honouring Retry-After); other 4xx fail
at once. The API key is read from an environment variable and never appears in logs or errors.
"""
import collections
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

import gin

from lmcor.sampling.backends.base import Backend, BackendError, Generation, Request, SamplingParams

log = logging.getLogger(__name__)
MODES = ("completions", "chat")
MAX_API_STOPS = 4  # OpenAI's limit; the remaining stops are applied by post-processing


class RetryableError(Exception):
    def __init__(self, reason: str, retry_after: Optional[float] = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class HttpBackendError(BackendError):
    """`reason` ("connection", "timeout", "http_404", ...) and `status` (the upstream's HTTP
    status, if it answered) let a caller such as `lmcor serve` map the failure to its own reply."""

    def __init__(self, message: str, reason: Optional[str] = None, status: Optional[int] = None):
        super().__init__(message)
        self.reason, self.status = reason, status


@gin.configurable
class HttpBackend(Backend):
    def __init__(self, base_url: str = "http://127.0.0.1:8000/v1", model: str = gin.REQUIRED,
                 mode: str = "completions", api_key_env: Optional[str] = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout_s: float = 60.0, max_retries: int = 8,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 30.0,
                 extra_body: Optional[dict] = None, jitter_seed: Optional[int] = None,
                 connect_retries: int = 0):
        """`max_retries`: retries of a call after any retryable failure; `connect_retries`: at
        least this many after a connection refused, reset or closed before any reply (nothing
        was generated, so repeating it is always safe)."""
        if mode not in MODES:
            raise ValueError(f"HttpBackend.mode={mode!r}; choose one of {', '.join(MODES)}")
        if concurrency < 1 or max_retries < 0 or connect_retries < 0:
            raise ValueError("HttpBackend: concurrency must be >= 1, max_retries and "
                             "connect_retries >= 0")
        self.connect_retries = connect_retries
        self.base_url = base_url.rstrip("/")
        self.model, self.mode = model, mode
        self.api_key_env = api_key_env
        self.concurrency, self.timeout_s, self.max_retries = concurrency, timeout_s, max_retries
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.extra_body = dict(extra_body or {})
        self._jitter = random.Random(jitter_seed)
        self._lock = threading.Lock()
        self._retries: collections.Counter = collections.Counter()
        self._calls = 0

    @property
    def generator(self) -> str:
        return self.model

    @property
    def url(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.mode == 'chat' else 'completions'}"

    def describe(self) -> Dict:
        return {**super().describe(), "url": self.url, "model": self.model, "mode": self.mode,
                "api_key_env": self.api_key_env, "concurrency": self.concurrency}

    def stats(self) -> Dict:
        with self._lock:
            return {"http_calls": self._calls, "retries": sum(self._retries.values()),
                    "retries_by_reason": dict(self._retries)}

    # ------------------------------------------------------------------ one request

    def _body(self, req: Request, params: SamplingParams, greedy: bool) -> dict:
        body = {"model": self.model, "max_tokens": params.max_new_tokens,
                "n": 1 if greedy else params.num_samples,
                "temperature": 0.0 if greedy else params.temperature, "seed": req.seed}
        if not greedy and params.top_p < 1.0:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop"] = list(params.stop[:MAX_API_STOPS])
        if self.mode == "chat":
            body["messages"] = list(req.messages)
        else:
            body["prompt"] = req.prompt
        return {**body, **self.extra_body}

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return text.replace(key, "<redacted>") if key else text

    def _post_once(self, body: dict) -> dict:
        data = json.dumps(body).encode()
        request = urllib.request.Request(self.url, data=data, headers=self._headers())
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            if e.code == 429 or e.code >= 500:
                raise RetryableError(f"http_{e.code}", _retry_after(e.headers)) from None
            detail = self._redact(e.read()[:300].decode("utf-8", "replace"))
            raise HttpBackendError(f"{self.url} answered HTTP {e.code}: {detail}",
                                   reason=f"http_{e.code}", status=e.code) from None
        except (socket.timeout, TimeoutError):
            raise RetryableError("timeout") from None
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise RetryableError("timeout") from None
            raise RetryableError("connection") from None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RetryableError("malformed_json") from None

    def _parse(self, reply: dict, n: int, greedy: bool, params: SamplingParams) -> List[Generation]:
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or len(choices) != n:
            raise RetryableError("malformed_reply")
        choices = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        texts = [_choice_text(c, self.mode) for c in choices]
        if any(t is None for t in texts):
            raise RetryableError("malformed_reply")
        usage = reply.get("usage") or {}
        total = usage.get("completion_tokens") if isinstance(usage, dict) else None
        gens = []
        for c, text in zip(choices, texts):
            tokens = total // n if isinstance(total, int) else len(text.split())
            gens.append(Generation(text=text, decoding="greedy" if greedy else "sample",
                                   temperature=0.0 if greedy else params.temperature,
                                   logprob=_choice_logprob(c), num_tokens=tokens))
        return gens

    def _retries_after(self, reason: str) -> int:
        return max(self.max_retries, self.connect_retries if reason == "connection" else 0)

    def _call(self, req: Request, params: SamplingParams, greedy: bool) -> List[Generation]:
        body = self._body(req, params, greedy)
        attempt = 0
        while True:
            with self._lock:
                self._calls += 1
            try:
                return self._parse(self._post_once(body), body["n"], greedy, params)
            except RetryableError as e:
                if attempt >= self._retries_after(e.reason):
                    raise HttpBackendError(
                        f"{self.url}: example {req.id!r} failed after {attempt + 1} attempts "
                        f"(last: {e.reason})", reason=e.reason,
                        status=_status_of(e.reason)) from None
                with self._lock:
                    self._retries[e.reason] += 1
                delay = self._backoff(attempt, e.retry_after)
                log.warning("retrying example %s after %s (attempt %d, sleeping %.2fs)",
                            req.id, e.reason, attempt + 1, delay)
                time.sleep(delay)
                attempt += 1

    def _backoff(self, attempt: int, retry_after: Optional[float]) -> float:
        cap = min(self.backoff_max_s, self.backoff_base_s * (2 ** attempt))
        with self._lock:
            delay = self._jitter.uniform(0, cap)  # full jitter spreads out a thundering herd
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        return delay

    # ------------------------------------------------------------------ the batch

    def generate(self, requests: Sequence[Request],
                 params: SamplingParams) -> List[List[Generation]]:
        jobs = [(i, True) for i in range(len(requests)) if params.greedy]
        jobs += [(i, False) for i in range(len(requests)) if params.num_samples]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {job: pool.submit(self._call, requests[job[0]], params, job[1])
                       for job in jobs}
            results = {job: f.result() for job, f in futures.items()}
        out = []
        for i in range(len(requests)):
            out.append(results.get((i, True), []) + results.get((i, False), []))
        return out


def _status_of(reason: str) -> Optional[int]:
    return int(reason[5:]) if reason.startswith("http_") else None


def _retry_after(headers) -> Optional[float]:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _choice_text(choice, mode: str) -> Optional[str]:
    if not isinstance(choice, dict):
        return None
    if mode == "chat":
        msg = choice.get("message")
        text = msg.get("content") if isinstance(msg, dict) else None
    else:
        text = choice.get("text")
    return text if isinstance(text, str) else None


def _choice_logprob(choice: dict) -> Optional[float]:
    lp = choice.get("logprobs")
    if isinstance(lp, dict):
        if isinstance(lp.get("token_logprobs"), list):  # completions
            return float(sum(x for x in lp["token_logprobs"] if x is not None))
        if isinstance(lp.get("content"), list):  # chat
            return float(sum(t.get("logprob", 0.0) for t in lp["content"]))
    return None
