"""`lmcor serve`: an OpenAI-compatible proxy that corrects any LLM's output (docs/serving.md).

    lmcor serve --corrector=MODEL_DIR --upstream=http://host:port/v1 [--num_candidates=5]
    lmcor serve --corrector=MODEL_DIR --upstream=jax:gguf:/path/gemma.gguf

Per request the upstream is asked for its greedy output and `num_candidates - 1` samples (two
concurrent calls), the corrector input is built exactly as in training, and concurrent requests
are beam-decoded together by a micro-batcher (one jitted call per batch, padded to one of the
corrector's fixed decode shapes, all compiled before the server listens). Standard library HTTP
server; no new dependencies.
"""
import argparse
import concurrent.futures
import hmac
import json
import os
import queue
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, Optional

from absl import logging

from lmcor.backends.base import Request, SamplingParams
from lmcor.corrector import Corrector, InputTooLongError, pool_record, row_bucket
from lmcor.serve_metrics import Metrics
from lmcor.upstream import ApiError, make_upstream

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")


# ------------------------------------------------------------------------------- batching


class MicroBatcher:
    """Queues prepared corrector inputs; one thread decodes up to `max_batch` of them at once,
    waiting at most `max_wait_ms` after the first for others to arrive."""

    def __init__(self, corrector: Corrector, metrics: Metrics, max_batch: int, max_wait_ms: float):
        self.corrector, self.metrics = corrector, metrics
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.queue: "queue.Queue" = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="lmcor-batcher", daemon=True)
        self.thread.start()

    def submit(self, ids: List[int]) -> concurrent.futures.Future:
        future = concurrent.futures.Future()
        self.queue.put((ids, future))
        return future

    def stop(self):
        self.queue.put(None)
        self.thread.join()

    def _collect(self, first) -> list:
        items, deadline = [first], time.monotonic() + self.max_wait
        while len(items) < self.max_batch:
            try:
                item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:  # stop marker: finish this batch, then stop
                self.queue.put(None)
                break
            items.append(item)
        # A request that already gave up (decode timeout) is not decoded.
        return [(ids, f) for ids, f in items if f.set_running_or_notify_cancel()]

    def _run(self):
        while True:
            first = self.queue.get()
            if first is None:
                return
            items = self._collect(first)
            if not items:
                continue
            try:
                texts, _ = self.corrector.decode_ids([ids for ids, _ in items],
                                                     row_bucket(len(items), self.max_batch))
            except Exception as e:  # one bad batch must not stop the server
                logging.exception("corrector decode failed")
                for _, f in items:
                    f.set_exception(e)
                continue
            self.metrics.batch(len(items))
            for (_, f), text in zip(items, texts):
                f.set_result(text)


# ------------------------------------------------------------------------------- requests


def _chat_prompt(messages) -> str:
    """Chat turns as one prompt (Gemma's template), for upstreams that take text."""
    turns = [f"<start_of_turn>{'model' if m['role'] == 'assistant' else 'user'}\n"
             f"{m['content']}<end_of_turn>\n" for m in messages]
    return "".join(turns) + "<start_of_turn>model\n"


def parse_body(raw: bytes, chat: bool, limits: dict) -> dict:
    """Validated client request -> {"prompt", "messages", "source", "max_tokens", ...}."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    if body.get("stream"):
        raise ApiError(400, "stream=true is not supported: the corrector needs the whole pool "
                            "before it can write; send stream=false")
    if body.get("n", 1) != 1:
        raise ApiError(400, "n must be 1: the proxy returns one corrected output")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", limits["max_tokens"]))
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= limits["max_tokens"]:
        raise ApiError(400, f"max_tokens must be an integer in [1, {limits['max_tokens']}]")
    extra = body.get("lmcor") or {}
    if not isinstance(extra, dict):
        raise ApiError(400, 'field "lmcor" must be an object')
    if chat:
        messages = body.get("messages")
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and
            isinstance(m.get("role"), str) for m in messages)
        if not ok:
            raise ApiError(400, 'field "messages" must be a non-empty list of '
                                '{"role": str, "content": str}')
        prompt, default_source = _chat_prompt(messages), messages[-1]["content"]
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, 'field "prompt" must be a string (one prompt per request)')
        messages, default_source = None, prompt
    source = extra.get("source", default_source)
    if not isinstance(source, str):
        raise ApiError(400, 'field "lmcor.source" must be a string')
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    return {"prompt": prompt, "messages": messages, "source": source, "max_tokens": max_tokens,
            "stop": stop, "seed": body.get("seed") if isinstance(body.get("seed"), int) else 0,
            "model": str(body.get("model") or "lmcor"),
            "return_candidates": bool(extra.get("return_candidates"))}


class ServeApp:
    """Everything a request needs: corrector, upstream, batcher, limits, metrics."""

    def __init__(self, corrector: Corrector, upstream, *, num_candidates: int = 5,
                 temperature: float = 0.6, max_batch_size: int = 8, max_wait_ms: float = 10.0,
                 max_request_bytes: int = 1 << 20, max_tokens: int = 256,
                 decode_timeout_s: float = 60.0, auth_token: Optional[str] = None):
        if num_candidates < 1:
            raise ValueError("--num_candidates must be >= 1 (the greedy output counts as one)")
        self.corrector, self.upstream = corrector, upstream
        self.num_candidates, self.temperature = num_candidates, temperature
        self.limits = {"max_tokens": max_tokens, "max_request_bytes": max_request_bytes}
        self.decode_timeout_s, self.auth_token = decode_timeout_s, auth_token
        self.metrics = Metrics(max_batch_size, corrector.compiled_executables,
                               lambda: getattr(upstream, "connection_retries", 0))
        self.batcher = MicroBatcher(corrector, self.metrics, max_batch_size, max_wait_ms)
        self.accepting = True

    def authorized(self, header: Optional[str]) -> bool:
        if self.auth_token is None:
            return True
        given = header[len("Bearer "):] if header and header.startswith("Bearer ") else ""
        return hmac.compare_digest(given.encode(), self.auth_token.encode())

    def _candidates(self, req: dict, chat: bool):
        params = SamplingParams(greedy=True, num_samples=self.num_candidates - 1,
                                temperature=self.temperature, max_new_tokens=req["max_tokens"],
                                stop=req["stop"])
        request = Request(id=uuid.uuid4().hex, prompt=req["prompt"],
                          messages=tuple(req["messages"] or ()), seed=req["seed"])
        generator, gens = self.upstream.generate("chat" if chat else "completions", req["model"],
                                                 request, params)
        return [g.candidate(generator, None, g.text) for g in gens]

    def handle(self, raw: bytes, chat: bool) -> dict:
        req = parse_body(raw, chat, self.limits)
        try:  # refuse an oversized source before paying for the upstream call
            self.corrector.tokenize(req["source"])
        except InputTooLongError as e:
            raise ApiError(413, f"source too long: {e}") from None
        candidates = self._candidates(req, chat)
        try:
            ids = self.corrector.prepare(pool_record(req["source"], candidates))
        except InputTooLongError as e:
            raise ApiError(413, str(e)) from None
        future = self.batcher.submit(ids)
        try:
            text = future.result(timeout=self.decode_timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ApiError(504, f"corrector decode took over {self.decode_timeout_s}s",
                           "decode_timeout") from None
        return _response(req, chat, text, len(ids), candidates)

    def close(self):
        self.batcher.stop()


def _response(req: dict, chat: bool, text: str, prompt_tokens: int, candidates) -> dict:
    completion_tokens = len(text.split())
    choice = {"index": 0, "finish_reason": "stop", "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    out = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
           "object": "chat.completion" if chat else "text_completion",
           "created": int(time.time()), "model": req["model"], "choices": [choice],
           "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "total_tokens": prompt_tokens + completion_tokens}}
    if req["return_candidates"]:
        out["lmcor"] = {"candidates": candidates}
    return out


def _error_payload(e: ApiError) -> dict:
    return {"error": {"message": e.message, "type": e.kind, "code": e.status}}


class Handler(BaseHTTPRequestHandler):
    server_version = "lmcor-serve"

    def log_message(self, fmt, *args):  # absl, not stderr noise per request
        logging.debug("%s " + fmt, self.address_string(), *args)

    @property
    def app(self) -> ServeApp:
        return self.server.app

    def _send(self, status: int, payload, content_type: str = "application/json"):
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if status == 401:
                self.send_header("WWW-Authenticate", "Bearer")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            logging.info("client went away before its %d reply", status)

    def _error(self, e: ApiError):
        self._send(e.status, _error_payload(e))

    def do_GET(self):
        if self.path == "/healthz":
            ok = self.app.accepting
            return self._send(200 if ok else 503, {"status": "ok" if ok else "shutting_down"})
        if self.path == "/metrics":
            if not self.app.authorized(self.headers.get("Authorization")):
                return self._error(ApiError(401, "missing or wrong bearer token", "auth_error"))
            return self._send(200, self.app.metrics.render(), "text/plain; version=0.0.4")
        self._error(ApiError(404, f"no such endpoint: GET {self.path}", "not_found"))

    def do_POST(self):
        start = time.perf_counter()
        with self.app.metrics.lock:
            self.app.metrics.inflight += 1
        try:
            status, payload = self._post()
        finally:
            with self.app.metrics.lock:
                self.app.metrics.inflight -= 1
        # Counted before the reply goes out, so a client that scrapes /metrics right after its
        # answer always sees its own request.
        endpoint = self.path if self.path in ENDPOINTS else "other"
        self.app.metrics.request(endpoint, status, time.perf_counter() - start)
        self._send(status, payload)

    def _post(self):
        """-> (status, JSON payload); never raises."""
        try:
            raw = self._read_body()
            if self.path not in ENDPOINTS:
                raise ApiError(404, f"no such endpoint: POST {self.path}", "not_found")
            if not self.app.authorized(self.headers.get("Authorization")):
                raise ApiError(401, "missing or wrong bearer token", "auth_error")
            return 200, self.app.handle(raw, chat=self.path == ENDPOINTS[1])
        except ApiError as e:
            if e.kind.startswith("upstream"):
                self.app.metrics.upstream_error({502: "bad_gateway", 504: "timeout"}.get(
                    e.status, f"http_{e.status}"))
            return e.status, _error_payload(e)
        except Exception:  # a bug must still answer, and be logged with its trace
            logging.exception("request failed")
            return 500, _error_payload(ApiError(500, "internal error (see the server log)",
                                                "server_error"))

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise ApiError(411 if length is None else 400, "a Content-Length header is required")
        if int(length) > self.app.limits["max_request_bytes"]:
            self._discard(int(length))
            raise ApiError(413, f"request body of {length} bytes exceeds the limit of "
                                f"{self.app.limits['max_request_bytes']}")
        return self.rfile.read(int(length))

    def _discard(self, length: int, most: int = 4 << 20):
        """Reads (a bounded amount of) a refused body, so a client still sending it sees the
        413 rather than a connection reset; the connection is closed after the reply."""
        self.close_connection = True
        self.connection.settimeout(5.0)
        try:
            while length > 0 and most > 0:
                chunk = self.rfile.read(min(length, most, 1 << 16))
                if not chunk:
                    return
                length, most = length - len(chunk), most - len(chunk)
        except OSError:
            pass


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() then waits for in-flight requests
    request_queue_size = 256  # bursts of concurrent clients must not see refused connections

    def __init__(self, address, app: ServeApp):
        super().__init__(address, Handler)
        self.app = app

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"

    def start(self) -> "Server":
        threading.Thread(target=self.serve_forever, name="lmcor-http", daemon=True).start()
        return self

    def stop(self):
        """Stops accepting, lets every in-flight request finish, then stops the batcher."""
        self.app.accepting = False
        self.shutdown()
        self.server_close()
        self.app.close()


# ------------------------------------------------------------------------------- CLI


def _flags(argv):
    p = argparse.ArgumentParser(prog="lmcor serve", description=__doc__.split("\n")[0])
    p.add_argument("--corrector", required=True, help="MODEL_DIR of a trained corrector")
    p.add_argument("--upstream", required=True, help="http(s)://host:port/v1 or jax:gguf:PATH")
    p.add_argument("--upstream_model", default=None,
                   help="model name sent upstream (default: the client's `model` field)")
    p.add_argument("--upstream_api_key_env", default="OPENAI_API_KEY")
    p.add_argument("--upstream_timeout_s", type=float, default=60.0)
    p.add_argument("--upstream_retries", type=int, default=0,
                   help="retries of failed upstream calls (timeouts, 429, 5xx included)")
    p.add_argument("--upstream_connect_retries", type=int, default=3,
                   help="retries of upstream calls whose connection was refused or dropped "
                        "before any reply")
    p.add_argument("--num_candidates", type=int, default=5)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--auth_token_env", default=None,
                   help="environment variable holding the bearer token clients must send")
    p.add_argument("--max_batch_size", type=int, default=8)
    p.add_argument("--max_wait_ms", type=float, default=10.0)
    p.add_argument("--max_request_bytes", type=int, default=1 << 20)
    p.add_argument("--max_tokens", type=int, default=256, help="largest max_tokens accepted")
    p.add_argument("--decode_timeout_s", type=float, default=60.0)
    p.add_argument("--checkpoint_step", type=int, default=None)
    return p


def _auth_token(env: Optional[str]) -> Optional[str]:
    if not env:
        return None
    token = os.environ.get(env)
    if not token:
        raise ValueError(f"--auth_token_env={env}: that environment variable is empty or unset")
    return token


def main(argv=None) -> int:
    from lmcor import config as gin_config

    argv = sys.argv[1:] if argv is None else list(argv)
    files, bindings, rest = gin_config.split_gin_flags(argv)
    args = _flags(argv).parse_args(rest)
    corrector = Corrector.from_model_dir(args.corrector, files, bindings, args.checkpoint_step)
    logging.info("compiling every corrector decode shape (batches up to %d, inputs up to %d "
                 "tokens)", args.max_batch_size, corrector.settings.max_input_tokens)
    corrector.warmup(args.max_batch_size)
    upstream = make_upstream(args.upstream, args.upstream_model, args.upstream_timeout_s,
                             args.upstream_retries, args.upstream_api_key_env,
                             args.upstream_connect_retries)
    app = ServeApp(corrector, upstream, num_candidates=args.num_candidates,
                   temperature=args.temperature, max_batch_size=args.max_batch_size,
                   max_wait_ms=args.max_wait_ms, max_request_bytes=args.max_request_bytes,
                   max_tokens=args.max_tokens, decode_timeout_s=args.decode_timeout_s,
                   auth_token=_auth_token(args.auth_token_env))
    server = Server((args.host, args.port), app).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"lmcor serve: listening on {server.url}", flush=True)
    while not stop.wait(0.5):
        pass
    logging.info("shutting down: finishing in-flight requests")
    server.stop()
    print("lmcor serve: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
