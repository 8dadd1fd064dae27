"""A `lmcor serve` app on 127.0.0.1 in front of a loopback upstream, and the HTTP calls the
serving tests make to it (completions, /metrics, /healthz)."""
import contextlib
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request

from lmcor.inference.settings import CorrectorSettings
from lmcor.serve.app import ServeApp
from lmcor.serve.server import Server
from lmcor.serve.upstream import HttpUpstream

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROMPT = "Translate to German: The cat sat on the mat."

# One width (128), and a fresh model per test: its decode loops are compiled by the test itself.
SMALL = CorrectorSettings(beam_size=2, max_decode_tokens=6, max_input_tokens=128,
                          length_bucket=128)


@contextlib.contextmanager
def serving(corrector, upstream_url, *, timeout_s=5.0, connect_retries=3, **kwargs):
    upstream = HttpUpstream(upstream_url, None, timeout_s, retries=0, api_key_env=None,
                            connect_retries=connect_retries)
    app = ServeApp(corrector, upstream, **{"max_batch_size": 4, "max_wait_ms": 5, **kwargs})
    server = Server(("127.0.0.1", 0), app).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def starting(load_corrector, upstream_url, **kwargs):
    """A server that loads its corrector and compiles its decode shapes after it listens, as
    `lmcor serve` does."""
    app = ServeApp(**{"max_batch_size": 1, "num_candidates": 1, "max_wait_ms": 5, **kwargs})
    server = Server(("127.0.0.1", 0), app).start()
    app.start(load_corrector, lambda: HttpUpstream(upstream_url, None, 5.0, 0, None))
    try:
        yield server
    finally:
        server.stop()


def post(server, path, body, token=None, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(server.url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def metrics(server) -> str:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        return resp.read().decode()


def metric(text: str, name: str) -> float:
    return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))


def healthz(server):
    try:
        with urllib.request.urlopen(server.url + "/healthz", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_ready(server, timeout_s: float = 600.0) -> list:
    """Polls /healthz until it answers 200 -> every body it answered on the way."""
    seen, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, body = healthz(server)
        seen.append(body)
        if status == 200:
            return seen
        assert body["status"] == "warming_up", body
        time.sleep(0.05)
    raise AssertionError(f"not ready after {timeout_s}s: {seen[-1]}")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
