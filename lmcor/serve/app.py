"""The application behind `lmcor serve`'s endpoints: start-up (loading the corrector and the
upstream, compiling the decode shapes, the /healthz state) and one completion request from its
body to its reply (upstream pool, corrector input, micro-batched decode)."""
import concurrent.futures
import hmac
import threading
import time
import uuid
from typing import Callable, Optional, Sequence, Tuple

from absl import logging

from lmcor.sampling.backends.base import Request, SamplingParams
from lmcor.serve.api import parse_body, response
from lmcor.serve.batcher import MicroBatcher
from lmcor.serve.decoder import Decoder
from lmcor.serve.prometheus import Metrics
from lmcor.serve.upstream import ApiError


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
            self._set_state({"status": "failed",
                             # As raised: `lmcor serve` prints it on one line as it exits.
                             "message": f"start-up failed: {type(e).__name__}: {e}"})

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
        from lmcor.data.pool_schema import pool_record
        from lmcor.inference.settings import InputTooLongError

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
        return response(req, chat, text, len(ids), completion_tokens, finish_reason, candidates)

    def close(self, loader_wait_s: float = 300.0) -> bool:
        """Stops taking requests and stops the batcher and the upstream; the loader stops after
        the step it is in (a load, a shape's compile), waited for up to `loader_wait_s`.
        -> whether the loader is done: if not, the process must end without tearing the
        interpreter down (os._exit), as XLA aborts one that exits in the middle of a compile."""
        self.accepting = False
        loader = self.loader
        if loader is not None and loader is not threading.current_thread():
            if loader.is_alive():
                logging.info("shutting down: waiting up to %.0f s for the start-up step in "
                             "progress", loader_wait_s)
            loader.join(loader_wait_s)
        if self.batcher is not None:
            self.batcher.stop()
        if self.upstream is not None:
            self.upstream.close()
        return loader is None or not loader.is_alive()
