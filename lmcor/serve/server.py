"""The HTTP side of `lmcor serve`: a standard-library threading server whose handler routes
the OpenAI-compatible endpoints, /healthz and /metrics to a `ServeApp`, reads bodies within the
size limit and counts every reply in the metrics."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from absl import logging

from lmcor.serve.api import ENDPOINTS, error_payload
from lmcor.serve.app import ServeApp
from lmcor.serve.upstream import ApiError


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
        self._send(e.status, error_payload(e))

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
            return e.status, error_payload(e)
        except Exception:  # a bug must still answer, and be logged with its trace
            logging.exception("request failed")
            return 500, error_payload(ApiError(500, "internal error (see the server log)",
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

    def stop(self, loader_wait_s: float = 300.0) -> bool:
        """Stops accepting, lets every in-flight request finish, then closes the app
        (`ServeApp.close`: -> whether its start-up thread is done)."""
        self.app.accepting = False
        self.shutdown()
        self.server_close()
        return self.app.close(loader_wait_s)
