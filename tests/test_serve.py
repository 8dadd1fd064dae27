"""`lmcor serve` against a real scripted OpenAI-compatible upstream on loopback."""
import concurrent.futures
import contextlib
import dataclasses
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from lmcor.corrector import Corrector, pool_record
from lmcor.serve import Server, ServeApp
from lmcor.upstream import HttpUpstream

from _llm_server import RAMBLE, FakeLLM, reply_text
from _tiny_corrector import shared_corrector

PROMPT = "Translate to German: The cat sat on the mat."


@pytest.fixture(scope="module")
def corrector(task_spm_path):
    return shared_corrector(task_spm_path)


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


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_completions_returns_the_corrected_pool(corrector):
    with FakeLLM() as llm, serving(corrector, llm.base_url) as server:
        status, reply = post(server, "/v1/completions",
                             {"model": "m", "prompt": PROMPT, "max_tokens": 16, "seed": 3,
                              "lmcor": {"return_candidates": True}})
        bodies = [body for _, body, _ in llm.requests]
    assert status == 200, reply
    assert reply["object"] == "text_completion" and reply["model"] == "m"
    assert set(reply["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    cands = reply["lmcor"]["candidates"]
    # What the scripted upstream says for greedy (T=0) and the 4 samples (T=0.6), in order.
    want = [reply_text(PROMPT, 3, 0.0, 0)] + [reply_text(PROMPT, 3, 0.6, i) for i in range(4)]
    assert [c["text"] for c in cands] == [w + RAMBLE for w in want]
    assert [c["decoding"] for c in cands] == ["greedy"] + ["sample"] * 4
    assert sorted((b["n"], b["temperature"]) for b in bodies) == [(1, 0.0), (4, 0.6)]
    # The served text is the corrector's own output on the same pool record.
    assert reply["choices"][0]["text"] == corrector.correct([pool_record(PROMPT, cands)])[0]


def test_chat_completions_shape(corrector):
    messages = [{"role": "system", "content": "Fix grammar."},
                {"role": "user", "content": "She go to school yesterday."}]
    with FakeLLM() as llm, serving(corrector, llm.base_url) as server:
        status, reply = post(server, "/v1/chat/completions",
                             {"model": "m", "messages": messages, "max_tokens": 8})
        sent = [body for _, body, _ in llm.requests]
    assert status == 200, reply
    assert reply["object"] == "chat.completion" and "lmcor" not in reply
    msg = reply["choices"][0]["message"]
    assert msg["role"] == "assistant" and isinstance(msg["content"], str)
    assert all(b["messages"] == messages for b in sent)


def test_client_errors(corrector):
    with FakeLLM() as llm, serving(corrector, llm.base_url, max_request_bytes=2000) as server:
        status, reply = post(server, "/v1/completions", None, raw=b'{"prompt": "x",')
        assert status == 400 and "not valid JSON" in reply["error"]["message"]
        status, reply = post(server, "/v1/completions", {"prompt": "x", "stream": True})
        assert status == 400 and "stream" in reply["error"]["message"]
        status, reply = post(server, "/v1/chat/completions", {"messages": "hi"})
        assert status == 400 and "messages" in reply["error"]["message"]
        status, reply = post(server, "/v1/completions", {"prompt": "x" * 3_000_000})
        assert status == 413 and "exceeds the limit of 2000" in reply["error"]["message"]
        status, reply = post(server, "/v1/completions", {"prompt": "x", "max_tokens": 10 ** 6})
        assert status == 400 and "max_tokens" in reply["error"]["message"]
        assert llm.requests == []  # nothing invalid reached the upstream
        text = metrics(server)
    assert 'lmcor_requests_total{endpoint="/v1/completions",status="400"} 3' in text
    assert 'lmcor_requests_total{endpoint="/v1/completions",status="413"} 1' in text


def test_too_long_source_is_413_before_the_upstream(corrector):
    with FakeLLM() as llm, serving(corrector, llm.base_url) as server:
        status, reply = post(server, "/v1/completions", {"prompt": "word " * 600})
        assert status == 413 and "too long" in reply["error"]["message"]
        assert llm.requests == []


def test_upstream_down_is_502(corrector):
    with serving(corrector, f"http://127.0.0.1:{closed_port()}/v1", connect_retries=1) as server:
        status, reply = post(server, "/v1/completions", {"prompt": PROMPT})
        text = metrics(server)
    assert status == 502 and "connection" in reply["error"]["message"]
    assert 'lmcor_upstream_errors_total{reason="bad_gateway"} 1' in text
    assert metric(text, "lmcor_upstream_retries_total") == 1  # tried again once, then gave up


def _drop_first_connections(llm: FakeLLM, n: int):
    """The upstream closes its first n connections unanswered, as a listen backlog overflowed
    by a burst of connections does (socketserver closes a request it does not verify)."""
    dropped = iter(range(n))
    llm.server.verify_request = lambda request, address: next(dropped, None) is None


def test_dropped_upstream_connections_are_retried(corrector):
    with FakeLLM() as llm, serving(corrector, llm.base_url) as server:
        _drop_first_connections(llm, 2)  # the request's greedy call and its samples call
        status, reply = post(server, "/v1/completions",
                             {"prompt": PROMPT, "lmcor": {"return_candidates": True}})
        text = metrics(server)
        answered = len(llm.requests)
    assert status == 200, reply
    assert len(reply["lmcor"]["candidates"]) == 5 and answered == 2
    assert metric(text, "lmcor_upstream_retries_total") >= 1
    # Without retries the same dropped connection is the client's 502.
    with FakeLLM() as llm, serving(corrector, llm.base_url, connect_retries=0) as server:
        _drop_first_connections(llm, 2)
        status, reply = post(server, "/v1/completions", {"prompt": PROMPT})
    assert status == 502 and "connection" in reply["error"]["message"]


def test_upstream_hang_is_504(corrector):
    with FakeLLM(faults=["hang"], hang_s=2.0) as llm, \
            serving(corrector, llm.base_url, timeout_s=0.3) as server:
        start = time.monotonic()
        status, reply = post(server, "/v1/completions", {"prompt": PROMPT})
        assert time.monotonic() - start < 2.0
    assert status == 504 and "timed out" in reply["error"]["message"]


@pytest.mark.parametrize("fault,status", [("429", 429), ("500", 502)])
def test_upstream_http_errors_are_mapped(corrector, fault, status):
    with FakeLLM(faults=[fault, fault]) as llm, serving(corrector, llm.base_url) as server:
        got, reply = post(server, "/v1/completions", {"prompt": PROMPT})
    assert got == status and "upstream" in reply["error"]["message"]


def test_upstream_rejecting_our_key_is_502_not_401(corrector):
    with FakeLLM(api_key="the-upstream-key") as llm, serving(corrector, llm.base_url) as server:
        status, reply = post(server, "/v1/completions", {"prompt": PROMPT})
    assert status == 502 and "401" in reply["error"]["message"]


def test_bearer_token(corrector):
    with FakeLLM() as llm, serving(corrector, llm.base_url, auth_token="s3cret") as server:
        assert post(server, "/v1/completions", {"prompt": PROMPT})[0] == 401
        status, reply = post(server, "/v1/completions", {"prompt": PROMPT}, token="wrong")
        assert status == 401 and reply["error"]["type"] == "auth_error"
        assert llm.requests == []
        assert post(server, "/v1/completions", {"prompt": PROMPT}, token="s3cret")[0] == 200
        with urllib.request.urlopen(server.url + "/healthz", timeout=10) as resp:
            assert json.loads(resp.read()) == {"status": "ok"}


def test_concurrent_requests_are_decoded_together(corrector):
    prompts = [f"Translate to German: The cat sat on mat number {i}." for i in range(4)]
    with FakeLLM() as llm, serving(corrector, llm.base_url, max_wait_ms=400) as server:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda p: post(server, "/v1/completions",
                                                   {"prompt": p, "max_tokens": 8}), prompts))
        text = metrics(server)
    assert [s for s, _ in replies] == [200] * 4
    assert metric(text, "lmcor_batch_size_max") > 1
    assert metric(text, "lmcor_batch_size_count") < 4  # fewer decode calls than requests
    assert metric(text, "lmcor_batch_size_sum") == 4
    assert metric(text, "lmcor_request_latency_seconds_count") == 4


def test_serving_after_warmup_compiles_nothing(corrector):
    """Requests of varied lengths, micro-batched into varied batch sizes, decode only with the
    executables `Corrector.warmup` compiled before the server took requests."""
    # Widths 128/256/384; these pools (source + 5 candidates) give 235-372 tokens.
    settings = dataclasses.replace(corrector.settings, length_bucket=128)
    served = Corrector(corrector.lm, corrector.params, corrector.vocab, corrector.options,
                       settings)
    served.warmup(max_rows=4)
    before = served.compiled_executables()
    prompts = [("She go to school yesterday " * k).strip() for k in (1, 8, 2, 9, 5, 1, 7, 3)]
    with FakeLLM() as llm, serving(served, llm.base_url, max_wait_ms=100) as server:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(lambda p: post(server, "/v1/completions",
                                                   {"prompt": p, "max_tokens": 8}), prompts))
        text = metrics(server)
    assert [s for s, _ in replies] == [200] * len(prompts)
    widths = {served.width_bucket(r["usage"]["prompt_tokens"]) for _, r in replies}
    assert widths == {256, 384}  # the load did cross width buckets
    assert metric(text, "lmcor_batch_size_max") > 1  # and batched requests together
    assert metric(text, "lmcor_decode_executables") == before == served.compiled_executables()


def test_shutdown_finishes_in_flight_requests(corrector):
    with FakeLLM(delay_s=0.8) as llm:
        upstream = HttpUpstream(llm.base_url, None, 5.0, 0, None)
        server = Server(("127.0.0.1", 0), ServeApp(corrector, upstream, max_batch_size=4)).start()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(post, server, "/v1/completions", {"prompt": PROMPT})
            while not llm.requests:
                time.sleep(0.01)
            server.stop()  # returns only once the in-flight request is answered
            assert pending.result(timeout=10)[0] == 200
    with pytest.raises(urllib.error.URLError):
        post(server, "/v1/completions", {"prompt": PROMPT})


@pytest.mark.slow
def test_cli_serves_a_model_dir_and_stops_on_sigterm(task_spm_path, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from _tiny_corrector import tiny_config, tiny_params, write_model_dir

    write_model_dir(tmp_path, task_spm_path, tiny_params(tiny_config(task_spm_path)))
    with FakeLLM() as llm:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lmcor.serve", f"--corrector={tmp_path}",
             f"--upstream={llm.base_url}", "--port=0", "--max_batch_size=1",
             "--num_candidates=3"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        try:
            line = proc.stdout.readline()
            assert "listening on http://127.0.0.1:" in line, line
            server = type("S", (), {"url": line.split()[-1]})
            status, reply = post(server, "/v1/completions",
                                 {"prompt": PROMPT, "lmcor": {"return_candidates": True}})
            assert status == 200 and len(reply["lmcor"]["candidates"]) == 3
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            assert "stopped" in proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()


def test_cli_takes_bare_gin_strings_for_the_corrector(tmp_path):
    """`--gin.NAME=path` without inner quotes reaches the corrector's configurables: here the
    vocabulary, whose missing file is the first thing loading the corrector trips on."""
    import gin

    from lmcor import serve

    try:
        with pytest.raises(FileNotFoundError, match=r"no/such/vocab\.model: no such file"):
            serve.main([f"--corrector={tmp_path}", "--upstream=http://127.0.0.1:9/v1",
                        "--gin.task_vocabulary.spm_model=no/such/vocab.model"])
    finally:
        gin.clear_config()
