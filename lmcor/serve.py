"""`lmcor serve`: an OpenAI-compatible proxy that corrects any LLM's output (docs/serving.md).

    lmcor serve --corrector=MODEL_DIR --upstream=http://host:port/v1 [--num_candidates=5]
    lmcor serve --corrector=MODEL_DIR --upstream=jax:gguf:/path/gemma.gguf

Per request the upstream is asked for its greedy output and `num_candidates - 1` samples (two
concurrent calls), the corrector input is built exactly as in training, and concurrent requests
are beam-decoded together by a micro-batcher (one jitted call per batch, padded to one of the
corrector's fixed decode shapes and output lengths, all compiled before the server takes a
request). The server listens at once and loads and compiles in the background: /healthz
answers 503 "warming_up" with the compile progress until then. Standard library HTTP server;
no new dependencies.

Nothing heavy is imported at module level (the corrector pulls in JAX and TensorFlow), so that
`--help` and the checks of the flags answer in well under a second.
"""
import argparse
import concurrent.futures
import dataclasses
import errno
import hmac
import json
import os
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, List, Optional, Sequence, Tuple

from absl import logging

from lmcor.backends.base import Request, SamplingParams
from lmcor.batching import BatchWorker
from lmcor.serve_metrics import Metrics
from lmcor.upstream import ApiError, check_upstream, make_upstream

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")


# ------------------------------------------------------------------------------- decoding


class Decoder:
    """The corrector's beam search at a few fixed output lengths.

    The decode loop is compiled for a static number of new tokens, so decoding each request at
    its own `max_tokens` would compile once per distinct value while serving. Instead a request
    is decoded at the shortest of `lengths` that holds its `max_tokens` (the corrector's
    `max_decode_tokens` is always one of them, and the longest) and its output is cut to
    `max_tokens` corrector tokens.

    A server marks the shapes it has compiled (`warm`); a batch then runs at the smallest of
    them that holds its rows and width, never compiling while serving. A decoder nobody warms
    decodes every batch at its own shape, compiling on first use."""

    def __init__(self, corrector, max_rows: int, lengths: Sequence[int] = ()):
        top = corrector.settings.max_decode_tokens
        self.corrector, self.max_rows = corrector, max_rows
        self.lengths = tuple(sorted({min(int(n), top) for n in lengths} | {top}))
        self.compiled: Optional[set] = None  # (rows, width, length) once `warm` was called
        self._lock = threading.Lock()

    def length_for(self, max_tokens: int) -> int:
        return next((n for n in self.lengths if n >= max_tokens), self.lengths[-1])

    def shapes(self) -> List[Tuple[int, int, int]]:
        """Every (rows, width, output length) `decode` is called with. The first
        `len(self.lengths)` can serve any batch: per output length, the most rows at the
        widest width."""
        pairs = self.corrector.decode_shapes(self.max_rows)
        top = (max(r for r, _ in pairs), max(w for _, w in pairs))
        return ([(*top, n) for n in self.lengths]
                + [(r, w, n) for n in self.lengths for r, w in pairs if (r, w) != top])

    def _shape(self, rows: int, width: int, length: int) -> Tuple[int, int]:
        """The (rows, width) a batch runs at: its own, or while some are not compiled yet the
        cheapest compiled one that holds it (outputs equal up to float rounding)."""
        with self._lock:
            if self.compiled is None or (rows, width, length) in self.compiled:
                return rows, width
            fits = [(r * w, r, w) for r, w, n in self.compiled
                    if n == length and r >= rows and w >= width]
        if not fits:
            raise RuntimeError(f"no compiled decode shape holds {rows} rows x {width} tokens "
                               f"at output length {length}")
        return min(fits)[1:]

    def _run(self, token_lists: Sequence[Sequence[int]], length: int, rows: int,
             width: Optional[int] = None, compile_only: bool = False):
        from lmcor import decode

        c = self.corrector
        width = width or c.width_bucket(max(len(t) for t in token_lists))
        batch = decode.pad_prompts(token_lists, encoder_decoder=c.encoder_decoder,
                                   pad_id=int(c.lm.pad_id), bucket=width, rows=rows)
        config = dataclasses.replace(c.decode_config, max_new_tokens=length)
        return decode.decode_batch(c.lm, c.params, batch, config, compile_only=compile_only)

    def decode(self, token_lists: Sequence[Sequence[int]], length: int,
               rows: int) -> List[Tuple[List[int], bool]]:
        """Per input: (output ids without EOS, whether the corrector ended it with EOS)."""
        c = self.corrector
        width = c.width_bucket(max(len(t) for t in token_lists))
        dec = self._run(token_lists, length, *self._shape(rows, width, length))
        eos, out = int(c.lm.eos_id), []
        for tokens, n in zip(dec.tokens[:len(token_lists)], dec.lengths):
            ids = [int(t) for t in tokens[:int(n)]]
            ended = bool(ids) and ids[-1] == eos
            while ids and ids[-1] == eos:
                ids.pop()
            out.append((ids, ended))
        return out

    def warm(self, rows: int, width: int, length: int):
        """Compiles the decode of this shape without running it; batches may then use it."""
        self._run([[int(self.corrector.lm.eos_id)] * width], length, rows, width,
                  compile_only=True)
        with self._lock:
            self.compiled = (self.compiled or set()) | {(rows, width, length)}

    def finish(self, ids: List[int], ended: bool, max_tokens: int) -> Tuple[str, int, str]:
        """(text, completion tokens, finish_reason) of one output cut to max_tokens: "length"
        when max_tokens cut it or the corrector ran out of output length before its EOS."""
        kept = ids[:max_tokens]
        reason = "length" if len(ids) > max_tokens or not ended else "stop"
        return self.corrector.vocab.decode(kept), len(kept), reason


# ------------------------------------------------------------------------------- batching


@dataclasses.dataclass
class _Item:
    ids: List[int]
    length: int  # the output length it is decoded at
    max_tokens: int
    future: concurrent.futures.Future


class MicroBatcher(BatchWorker):
    """Queues prepared corrector inputs; one thread decodes up to `max_batch` of them at once,
    waiting at most `max_wait_ms` after the first for others to arrive. Inputs of one batch
    that need different output lengths are decoded in one call per length, so that a request's
    answer does not depend on the `max_tokens` of the requests it happened to share a batch
    with."""

    def __init__(self, decoder: Decoder, metrics: Metrics, max_batch: int, max_wait_ms: float):
        self.decoder, self.metrics = decoder, metrics
        super().__init__("lmcor-batcher", max_batch, max_wait_ms)

    def submit(self, ids: List[int], max_tokens: int) -> concurrent.futures.Future:
        future = concurrent.futures.Future()
        self.queue.put(_Item(ids, self.decoder.length_for(max_tokens), max_tokens, future))
        return future

    def accept(self, item: _Item) -> bool:
        # A request that already gave up (decode timeout) is not decoded.
        return item.future.set_running_or_notify_cancel()

    def group_key(self, item: _Item) -> int:
        return item.length

    def handle(self, length: int, group: List[_Item]) -> None:
        from lmcor.corrector import row_bucket

        try:
            outs = self.decoder.decode([item.ids for item in group], length,
                                       row_bucket(len(group), self.max_batch))
            results = [self.decoder.finish(ids, ended, item.max_tokens)
                       for item, (ids, ended) in zip(group, outs)]
        except Exception as e:  # one bad batch must not stop the server
            logging.exception("corrector decode failed")
            for item in group:
                item.future.set_exception(e)
            return
        self.metrics.batch(len(group))
        for item, result in zip(group, results):
            item.future.set_result(result)


# ------------------------------------------------------------------------------- requests


def _chat_prompt(messages) -> str:
    """Chat turns as one prompt (Gemma's template), for upstreams that take text."""
    turns = [f"<start_of_turn>{'model' if m['role'] == 'assistant' else 'user'}\n"
             f"{m['content']}<end_of_turn>\n" for m in messages]
    return "".join(turns) + "<start_of_turn>model\n"


def _is_int(value) -> bool:
    # JSON true/false arrive as bool, a subclass of int: `"max_tokens": true` is not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _max_tokens(body: dict, limit: int) -> int:
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:  # absent or null: the next name, then the server's limit
            continue
        if not _is_int(value) or not 1 <= value <= limit:
            raise ApiError(400, f"{name} must be an integer in [1, {limit}], got "
                                f"{json.dumps(value)}")
        return value
    return limit


def _stop(value) -> Tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ApiError(400, f'field "stop" must be a string or a list of strings, got '
                            f"{json.dumps(value)}")
    return tuple(s for s in value if s)


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
    n = body.get("n", 1)
    if n is not None and (not _is_int(n) or n != 1):
        raise ApiError(400, "n must be 1: the proxy returns one corrected output")
    max_tokens = _max_tokens(body, limits["max_tokens"])
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise ApiError(400, f"seed must be an integer, got {json.dumps(seed)}")
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
    return {"prompt": prompt, "messages": messages, "source": source, "max_tokens": max_tokens,
            "stop": _stop(body.get("stop")), "seed": 0 if seed is None else seed,
            "model": str(body.get("model") or "lmcor"),
            "return_candidates": bool(extra.get("return_candidates"))}


class ServeApp:
    """Everything a request needs: corrector, upstream, batcher, limits, metrics.

    Given a corrector and an upstream, the app is ready at once (the caller compiled, or does
    not mind compiling on the first requests). Without them it starts "warming up": `start`
    loads both and compiles the decode shapes that can serve any request in a background
    thread, while /healthz reports the progress and completion requests get 503; then it is
    ready, and the same thread compiles the smaller shapes."""

    def __init__(self, corrector=None, upstream=None, *, num_candidates: int = 5,
                 temperature: float = 0.6, max_batch_size: int = 8, max_wait_ms: float = 10.0,
                 max_request_bytes: int = 1 << 20, max_tokens: int = 256,
                 decode_timeout_s: float = 60.0, auth_token: Optional[str] = None,
                 decode_lengths: Sequence[int] = ()):
        problems = [msg for ok, msg in [
            (num_candidates >= 1, "--num_candidates must be >= 1 (the greedy output counts "
                                  "as one)"),
            (temperature > 0 or num_candidates == 1, "--temperature must be > 0 to sample"),
            (max_batch_size >= 1, "--max_batch_size must be >= 1"),
            (max_wait_ms >= 0, "--max_wait_ms must be >= 0"),
            (max_request_bytes >= 1, "--max_request_bytes must be >= 1"),
            (max_tokens >= 1, "--max_tokens must be >= 1"),
            (decode_timeout_s > 0, "--decode_timeout_s must be > 0"),
            (all(n >= 1 for n in decode_lengths), "--decode_lengths must all be >= 1"),
        ] if not ok]
        if problems:
            raise ValueError("; ".join(problems))
        self.corrector, self.upstream, self.decoder, self.batcher = None, None, None, None
        self.num_candidates, self.temperature = num_candidates, temperature
        self.max_batch_size, self.max_wait_ms = max_batch_size, max_wait_ms
        self.decode_lengths = tuple(decode_lengths)
        self.limits = {"max_tokens": max_tokens, "max_request_bytes": max_request_bytes}
        self.decode_timeout_s, self.auth_token = decode_timeout_s, auth_token
        # Read when /metrics is rendered, so they work before the corrector is loaded.
        self.metrics = Metrics(
            max_batch_size,
            lambda: self.corrector.compiled_executables() if self.corrector else 0,
            lambda: getattr(self.upstream, "connection_retries", 0),
            lambda: getattr(self.upstream, "batch_max", 0))
        self.accepting = True
        self._state_lock = threading.Lock()
        self._state = {"status": "warming_up", "phase": "starting",
                       "message": "warming up: starting", "shapes_done": 0, "shapes_total": None}
        self.loader: Optional[threading.Thread] = None
        # {"shapes", "of", "seconds"} once `start` can serve; "all_seconds" once all compiled
        self.warmup: Optional[dict] = None
        if corrector is not None:
            self._attach(corrector, upstream)
            self._set_state({"status": "ok"})

    # ------------------------------------------------------------------ start-up

    def _attach(self, corrector, upstream):
        self.decoder = Decoder(corrector, self.max_batch_size, self.decode_lengths)
        self.corrector, self.upstream = corrector, upstream
        self.batcher = MicroBatcher(self.decoder, self.metrics, self.max_batch_size,
                                    self.max_wait_ms)

    def _set_state(self, state: dict):
        with self._state_lock:
            self._state = state

    def _warming(self, phase: str, message: str, done: int = 0, total: Optional[int] = None):
        self._set_state({"status": "warming_up", "phase": phase,
                         "message": f"warming up: {message}", "shapes_done": done,
                         "shapes_total": total})

    def start(self, load_corrector: Callable[[], object], load_upstream: Callable[[], object],
              on_ready: Callable[[dict], None] = lambda warmup: None) -> threading.Thread:
        """Loads the corrector and the upstream and compiles every decode shape, in a
        background thread; the app turns ready (then calls `on_ready` with the warm-up's
        shapes and seconds) or failed when it is done."""
        self.loader = threading.Thread(target=self._load,
                                       args=(load_corrector, load_upstream, on_ready),
                                       name="lmcor-warmup", daemon=True)
        self.loader.start()
        return self.loader

    def _load(self, load_corrector, load_upstream, on_ready):
        try:
            self._warming("loading", "loading the corrector")
            corrector = load_corrector()
            self._warming("loading", "loading the upstream")
            upstream = load_upstream()
            self._attach(corrector, upstream)
            shapes, start = self.decoder.shapes(), time.perf_counter()
            needed = len(self.decoder.lengths)
            logging.info("compiling %d corrector decode shapes (rows, width, output length), "
                         "ready after the first %d: %s", len(shapes), needed, shapes)
            for i, shape in enumerate(shapes):
                if not self.accepting:  # shutting down: no point compiling the rest
                    return
                if i < needed:
                    self._warming("compiling", f"{i}/{needed} corrector decode shapes needed "
                                               "to serve compiled", i, needed)
                else:
                    self._set_state({"status": "ok", "shapes_done": i,
                                     "shapes_total": len(shapes),
                                     "message": f"serving; {i}/{len(shapes)} decode shapes "
                                                "compiled, the rest in the background"})
                self.decoder.warm(*shape)
                if i + 1 == needed:  # every request can run now, at the widest shape
                    self.warmup = {"shapes": needed, "of": len(shapes),
                                   "seconds": round(time.perf_counter() - start, 1)}
                    self._set_state({"status": "ok"})
                    on_ready(self.warmup)
            self._set_state({"status": "ok"})
            self.warmup["all_seconds"] = round(time.perf_counter() - start, 1)
            logging.info("corrector warm-up: %d shapes, %d executables, %.1f s", len(shapes),
                         corrector.compiled_executables(), self.warmup["all_seconds"])
        except Exception as e:  # the server cannot become ready: say why, main() exits
            logging.exception("start-up failed")
            # One line (gin appends "In call to configurable ..." on a line of its own).
            why = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
            self._set_state({"status": "failed",
                             "message": f"start-up failed: {type(e).__name__}: {why}"})

    def health(self) -> Tuple[int, dict]:
        """(HTTP status, body) of /healthz: 200 only when ready to answer completions."""
        if not self.accepting:
            return 503, {"status": "shutting_down"}
        with self._state_lock:
            state = dict(self._state)
        return (200 if state["status"] == "ok" else 503), state

    @property
    def failed(self) -> Optional[str]:
        """The start-up error, once loading or compiling failed."""
        with self._state_lock:
            return self._state["message"] if self._state["status"] == "failed" else None

    # ------------------------------------------------------------------ requests

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
        with self._state_lock:
            state = dict(self._state)
        # Refused while warming up only: a request accepted before a shutdown is still served.
        if state["status"] != "ok":
            raise ApiError(503, state["message"], "unavailable")
        from lmcor.corrector import InputTooLongError, pool_record

        try:  # refuse an oversized source before paying for the upstream call
            self.corrector.tokenize(req["source"])
        except InputTooLongError as e:
            raise ApiError(413, f"source too long: {e}") from None
        candidates = self._candidates(req, chat)
        try:
            ids = self.corrector.prepare(pool_record(req["source"], candidates))
        except InputTooLongError as e:
            raise ApiError(413, str(e)) from None
        future = self.batcher.submit(ids, req["max_tokens"])
        try:
            text, completion_tokens, finish_reason = future.result(timeout=self.decode_timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ApiError(504, f"corrector decode took over {self.decode_timeout_s}s",
                           "decode_timeout") from None
        return _response(req, chat, text, len(ids), completion_tokens, finish_reason, candidates)

    def close(self):
        self.accepting = False
        loader = self.loader
        if loader is not None and loader is not threading.current_thread():
            # XLA aborts the process if it exits in the middle of a compile: the loader stops
            # after the shape it is compiling.
            if loader.is_alive():
                logging.info("shutting down: waiting for the decode compile in progress")
            loader.join(300)
        if self.batcher is not None:
            self.batcher.stop()
        if self.upstream is not None:
            self.upstream.close()


def _response(req: dict, chat: bool, text: str, prompt_tokens: int, completion_tokens: int,
              finish_reason: str, candidates) -> dict:
    """The OpenAI reply; token counts are in the corrector's vocabulary (its input and
    output), not the upstream's."""
    choice = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
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
            if status == 503:  # warming up or shutting down: a client may come back later
                self.send_header("Retry-After", "5")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            logging.info("client went away before its %d reply", status)

    def _error(self, e: ApiError):
        self._send(e.status, _error_payload(e))

    def do_GET(self):
        if self.path == "/healthz":
            return self._send(*self.app.health())
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


EPILOG = """\
Gin flags (parsed after MODEL_DIR/config.gin, overriding it):
  --gin_file=FILE           a Gin file (repeatable); needed for a run that saved no config.gin
  --gin.NAME=VALUE          one binding, e.g. --gin.corrector_settings.beam_size=2 or
                            --gin.corrector_settings.max_input_tokens=512 (fewer shapes to
                            compile at start-up)

The server listens at once; /healthz answers 503 {"status": "warming_up", ...} with the compile
progress while the corrector loads and compiles the decode shapes that can serve any request,
then 200 {"status": "ok", ...} while the smaller shapes compile in the background. See
docs/serving.md."""


def _flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmcor serve", description=__doc__.split("\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--corrector", required=True, metavar="MODEL_DIR",
        help="folder `lmcor train` wrote (checkpoints/ and config.gin), or a released adapter "
             "folder (required)")
    add("--upstream", required=True, metavar="URL",
        help="the LLM: an OpenAI-compatible http(s)://host:port/v1, or jax:gguf:PATH for Gemma "
             "3 from a GGUF file in this process (required)")
    # Only shown here: lmcor.config.split_gin_flags takes --gin_file/--gin.* out before parsing.
    add("--gin_file", action="append", metavar="FILE",
        help="Gin file parsed after MODEL_DIR/config.gin (repeatable; default: none)")
    add("--checkpoint_step", type=int, default=None, metavar="N",
        help="checkpoint step to serve (default: the best by validation, else the latest)")
    add("--upstream_model", default=None, metavar="NAME",
        help="model name sent upstream (default: the client's `model` field)")
    add("--upstream_api_key_env", default="OPENAI_API_KEY", metavar="VAR",
        help="environment variable holding the upstream's API key; unset sends none "
             "(default: %(default)s)")
    add("--upstream_timeout_s", type=float, default=60.0, metavar="S",
        help="deadline of one upstream call, 504 past it (default: %(default)s)")
    add("--upstream_retries", type=int, default=0, metavar="N",
        help="retries of failed upstream calls: timeouts, 429 and 5xx included "
             "(default: %(default)s)")
    add("--upstream_connect_retries", type=int, default=3, metavar="N",
        help="retries of upstream calls whose connection was refused or dropped before any "
             "reply (default: %(default)s)")
    add("--num_candidates", type=int, default=5, metavar="N",
        help="pool size: the greedy output + N-1 samples (default: %(default)s)")
    add("--temperature", type=float, default=0.6, metavar="T",
        help="sampling temperature of the upstream's samples (default: %(default)s)")
    add("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    add("--port", type=int, default=8000,
        help="port to listen on; 0 picks a free one (default: %(default)s)")
    add("--auth_token_env", default=None, metavar="VAR",
        help="environment variable holding the bearer token clients must send "
             "(default: none, no auth)")
    add("--max_batch_size", type=int, default=8, metavar="N",
        help="most requests decoded in one corrector call (default: %(default)s)")
    add("--max_wait_ms", type=float, default=10.0, metavar="MS",
        help="how long a batch waits after its first request for others "
             "(default: %(default)s)")
    add("--max_request_bytes", type=int, default=1 << 20, metavar="N",
        help="largest request body; larger ones get 413 (default: %(default)s)")
    add("--max_tokens", type=int, default=256, metavar="N",
        help="largest max_tokens a client may ask for, and the max_tokens of a request "
             "without one (default: %(default)s)")
    add("--decode_lengths", default="", metavar="N,N",
        help="output lengths (corrector tokens) to compile the corrector decode for, besides "
             "corrector_settings.max_decode_tokens: a request decodes at the shortest one "
             "that holds its max_tokens, then is cut to max_tokens; each adds a warm-up "
             "compilation per decode shape (default: none)")
    add("--decode_timeout_s", type=float, default=60.0, metavar="S",
        help="corrector decode deadline, 504 past it (default: %(default)s)")
    return p


def _auth_token(env: Optional[str]) -> Optional[str]:
    if not env:
        return None
    token = os.environ.get(env)
    if not token:
        raise ValueError(f"--auth_token_env={env}: that environment variable is empty or unset")
    return token


def _decode_lengths(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(n) for n in text.replace(" ", "").split(",") if n)
    except ValueError:
        raise ValueError(f"--decode_lengths={text!r}: expected integers separated by commas")


def _bind(host: str, port: int, app: ServeApp) -> Server:
    if not 0 <= port <= 65535:
        raise ValueError(f"--port={port}: expected 0-65535")
    try:
        return Server((host, port), app)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ValueError(f"--port={port}: {host}:{port} is already in use") from None
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _fail(message: str, code: int = 2) -> int:
    print(f"lmcor serve: error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv=None) -> int:
    from lmcor import config as gin_config

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        files, bindings, rest = gin_config.split_gin_flags(argv)
    except (ValueError, StopIteration) as e:
        return _fail(str(e) or "--gin_file needs a value")
    args = _flags().parse_args(rest)
    # Everything that can be checked without the corrector is, before the minutes of loading
    # and compiling it.
    try:
        check_upstream(args.upstream)
        if not os.path.isdir(args.corrector):
            raise ValueError(f"--corrector={args.corrector}: no such folder")
        app = ServeApp(num_candidates=args.num_candidates, temperature=args.temperature,
                       max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                       max_request_bytes=args.max_request_bytes, max_tokens=args.max_tokens,
                       decode_timeout_s=args.decode_timeout_s,
                       auth_token=_auth_token(args.auth_token_env),
                       decode_lengths=_decode_lengths(args.decode_lengths))
        server = _bind(args.host, args.port, app)
    except ValueError as e:
        return _fail(str(e))

    def load_corrector():
        from lmcor.corrector import Corrector
        return Corrector.from_model_dir(args.corrector, files, bindings, args.checkpoint_step)

    def load_upstream():
        upstream = make_upstream(args.upstream, args.upstream_model, args.upstream_timeout_s,
                                 args.upstream_retries, args.upstream_api_key_env,
                                 args.upstream_connect_retries, args.max_batch_size,
                                 args.max_wait_ms)
        upstream.load()
        return upstream

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _serve(server, app, stop, load_corrector, load_upstream)
    finally:  # main() may run inside another program (tests): give its handlers back
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(server: Server, app: ServeApp, stop: threading.Event, load_corrector,
           load_upstream) -> int:
    started = time.perf_counter()
    server.start()
    print(f"lmcor serve: listening on {server.url}", flush=True)
    print("lmcor serve: warming up (GET /healthz for progress)", flush=True)
    app.start(load_corrector, load_upstream, lambda warmup: print(
        f"lmcor serve: ready after {time.perf_counter() - started:.1f} s ({warmup['shapes']} "
        f"of {warmup['of']} decode shapes compiled in {warmup['seconds']} s; the rest compile "
        "in the background)", flush=True))
    while not stop.wait(0.5):
        if app.failed:
            break
    failed = app.failed
    logging.info("shutting down: finishing in-flight requests")
    server.stop()
    if failed:
        return _fail(failed, 1)
    print("lmcor serve: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
