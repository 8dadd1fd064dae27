"""`lmcor serve` against a real scripted OpenAI-compatible upstream on loopback."""
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from lmcor.corrector import Corrector, CorrectorSettings, pool_record, row_buckets
from lmcor.serve import Decoder, Server, ServeApp
from lmcor.upstream import HttpUpstream, JaxUpstream

from _llm_server import RAMBLE, FakeLLM, reply_text
from _tiny_corrector import shared_corrector, tiny_corrector

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


# One width (128), and a fresh model per test: its decode loops are compiled by the test itself.
SMALL = CorrectorSettings(beam_size=2, max_decode_tokens=6, max_input_tokens=128,
                          length_bucket=128)


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
        _, full = post(server, "/v1/chat/completions",
                       {"model": "m", "messages": messages, "max_tokens": 8,
                        "lmcor": {"return_candidates": True}})
        sent = [body for _, body, _ in llm.requests]
    assert status == 200, reply
    assert reply["object"] == "chat.completion" and "lmcor" not in reply
    msg = reply["choices"][0]["message"]
    # The reply is the corrector's output for the last user turn and the pool the upstream
    # wrote for the same (seeded) request.
    want = corrector.correct([pool_record(messages[-1]["content"], full["lmcor"]["candidates"])])
    assert msg["role"] == "assistant"
    assert msg["content"] == want[0] == full["choices"][0]["message"]["content"]
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


@pytest.mark.parametrize("field,value", [
    ("stop", 5), ("stop", ["ok", 1]), ("stop", {"s": "x"}), ("max_tokens", True),
    ("max_tokens", False), ("max_completion_tokens", True), ("max_tokens", 2.0), ("n", True),
    ("seed", True), ("seed", "7")])
def test_malformed_fields_are_400(corrector, field, value):
    with FakeLLM() as llm, serving(corrector, llm.base_url) as server:
        status, reply = post(server, "/v1/completions", {"prompt": PROMPT, field: value})
        assert llm.requests == []
    assert status == 400 and field in reply["error"]["message"], reply


def test_null_and_list_fields_are_accepted(corrector):
    with FakeLLM() as llm, serving(corrector, llm.base_url) as server:
        status, reply = post(server, "/v1/completions",
                             {"prompt": PROMPT, "stop": ["\n\n", ""], "max_tokens": None,
                              "seed": None, "n": None})
        sent = [body for _, body, _ in llm.requests]
    assert status == 200, reply
    assert all(b["stop"] == ["\n\n"] for b in sent), sent


def test_max_tokens_bounds_the_corrected_output(corrector):
    """The corrected text is cut to `max_tokens` tokens of the corrector's vocabulary, with
    finish_reason "length"; usage counts those tokens."""
    body = {"prompt": PROMPT, "seed": 3, "lmcor": {"return_candidates": True}}
    with FakeLLM() as llm, serving(corrector, llm.base_url) as server:
        status, full = post(server, "/v1/completions", body)
        cut = {k: post(server, "/v1/completions", {**body, "max_tokens": k}) for k in (1, 2, 3)}
        chat = post(server, "/v1/chat/completions",
                    {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 1})
    assert status == 200, full
    text = full["choices"][0]["text"]
    assert text == corrector.correct([pool_record(PROMPT, full["lmcor"]["candidates"])])[0]
    n = full["usage"]["completion_tokens"]
    assert 3 < n <= corrector.settings.max_decode_tokens
    # No max_tokens: the server's limit (256), more than the corrector writes (6 tokens).
    top = corrector.settings.max_decode_tokens
    assert full["choices"][0]["finish_reason"] == ("length" if n == top else "stop")
    for k, (status, reply) in cut.items():
        assert status == 200, reply
        choice, usage = reply["choices"][0], reply["usage"]
        assert choice["finish_reason"] == "length" and usage["completion_tokens"] == k
        assert usage["total_tokens"] == usage["prompt_tokens"] + k
        assert text.startswith(choice["text"])
    # Each cut is the same output, one token longer (ids decoded, not words counted).
    assert len({reply["choices"][0]["text"] for _, reply in cut.values()}) == 3
    assert chat[0] == 200 and chat[1]["usage"]["completion_tokens"] == 1
    assert chat[1]["choices"][0]["finish_reason"] == "length"


def test_new_max_tokens_values_compile_nothing(task_spm_path):
    """A request decodes at the shortest compiled output length that holds its max_tokens, so
    no max_tokens value compiles anything after the warm-up."""
    served = tiny_corrector(task_spm_path, settings=SMALL)
    with FakeLLM() as llm, starting(lambda: served, llm.base_url, decode_lengths=(2,)) as server:
        wait_ready(server)
        compiled = served.compiled_executables()
        replies = {k: post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": k})
                   for k in (1, 2, 3, 5, 6, 7, 40, 256)}
        text = metrics(server)
    assert compiled == 2  # 1 row x 1 width x output lengths 2 and 6
    assert metric(text, "lmcor_decode_executables") == compiled == served.compiled_executables()
    assert {k: status for k, (status, _) in replies.items()} == dict.fromkeys(replies, 200)
    tokens = {k: r["usage"]["completion_tokens"] for k, (_, r) in replies.items()}
    assert tokens[1] == 1 and tokens[2] == 2 and all(tokens[k] <= min(k, 6) for k in tokens)
    # Above the longest compiled length the corrector's own limit is what bounds the output.
    assert tokens[7] == tokens[40] == tokens[256] == tokens[6]


def test_healthz_reports_warm_up_progress(task_spm_path):
    served = tiny_corrector(task_spm_path, settings=SMALL)
    with FakeLLM() as llm, starting(lambda: served, llm.base_url, max_batch_size=2) as server:
        first = healthz(server)
        refused = post(server, "/v1/completions", {"prompt": PROMPT})
        seen = wait_ready(server)
        answered = post(server, "/v1/completions", {"prompt": PROMPT})
        server.app.loader.join(60)
        ready = healthz(server)
        assert llm.requests[-1][1]["prompt"] == PROMPT and len(llm.requests) == 1
    assert first[0] == 503 and first[1]["status"] == "warming_up", first
    assert first[1]["message"].startswith("warming up")
    assert refused[0] == 503 and refused[1]["error"]["message"].startswith("warming up")
    progress = [(b["shapes_done"], b["shapes_total"]) for b in seen
                if b.get("phase") == "compiling"]
    # Ready once the 2-row shape (one width, one output length) is compiled; each shape is
    # seen before it compiles. The 1-row shape compiles after, while serving.
    assert progress and {total for _, total in progress} == {1}, seen
    assert any("0/1 corrector decode shapes needed to serve compiled" in b["message"]
               for b in seen), seen
    assert answered[0] == 200 and ready[0] == 200 and ready[1]["status"] == "ok", ready
    assert served.compiled_executables() == 2


def test_batches_run_at_the_cheapest_compiled_shape_that_holds_them(task_spm_path):
    """While the server has compiled only the covering shape (most rows, widest input), a
    1-row batch of a short input runs at it, compiles nothing, and answers what a decode at its
    own shape answers."""
    settings = dataclasses.replace(SMALL, max_input_tokens=256, length_bucket=64)
    served = tiny_corrector(task_spm_path, settings=settings)
    decoder = Decoder(served, max_rows=4)
    shapes = decoder.shapes()
    assert shapes[0] == (4, 256, 6) and len(shapes) == 3 * len(settings.widths)
    decoder.warm(*shapes[0])
    compiled = served.compiled_executables()
    inputs = [served.vocab.encode("a short input")]
    padded = decoder.decode(inputs, 6, rows=1)
    assert served.compiled_executables() == compiled == 1
    own = Decoder(served, max_rows=4).decode(inputs, 6, rows=1)  # never warmed: its own shape
    assert served.compiled_executables() == 2
    assert padded == own and padded[0][0]
    decoder.warm(1, 64, 6)
    assert decoder.decode(inputs, 6, rows=1) == own
    assert served.compiled_executables() == 2  # (1, 64, 6) was the shape `own` compiled


def test_metrics_batch_edges_are_the_corrector_row_buckets():
    from lmcor.serve_metrics import batch_edges

    assert all(batch_edges(n) == row_buckets(n) for n in range(1, 40))


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
def test_jax_upstream_samples_concurrent_requests_together(corrector, gemma_gguf_path):
    """The in-process Gemma (real 270M weights) samples concurrent requests in one call, so
    they also reach the corrector together; each still gets its own greedy output."""
    prompts = [f"Write one short sentence about the number {i}." for i in range(8)]
    upstream = JaxUpstream(gemma_gguf_path, max_batch=8, max_wait_ms=300)
    upstream.load()
    app = ServeApp(corrector, upstream, num_candidates=3, max_batch_size=8, max_wait_ms=300)
    server = Server(("127.0.0.1", 0), app).start()
    body = lambda p: {"prompt": p, "max_tokens": 4, "lmcor": {"return_candidates": True}}
    try:
        alone = post(server, "/v1/completions", body(prompts[0]))
        with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
            replies = list(pool.map(lambda p: post(server, "/v1/completions", body(p)), prompts))
        text = metrics(server)
    finally:
        server.stop()
    assert alone[0] == 200 and [s for s, _ in replies] == [200] * len(prompts), replies
    pools = [r["lmcor"]["candidates"] for _, r in replies]
    assert all([c["decoding"] for c in p] == ["greedy", "sample", "sample"] for p in pools)
    # Batched, a request's greedy output is the one it gets alone.
    assert pools[0][0]["text"] == alone[1]["lmcor"]["candidates"][0]["text"]
    assert metric(text, "lmcor_batch_size_max") > 1  # they reach the corrector together
    assert metric(text, "lmcor_upstream_batch_size_max") > 1


class _ByteTokenizer:
    """Prompt bytes as ids 3..258 after BOS 2: enough text in and out for a random model."""

    def encode(self, text, add_bos=False):
        return ([2] if add_bos else []) + [3 + b for b in text.encode()]

    def decode(self, ids):
        return bytes(min(max(int(i) - 3, 0), 255) for i in ids).decode("latin-1")


def test_jax_upstream_max_tokens_share_compiled_decodes():
    """Client max_tokens values inside one power-of-two bucket reuse one compiled decode."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from lmcor import decode
    from lmcor.backends.base import Request, SamplingParams
    from lmcor.models.gemma import GemmaConfig, GemmaLM

    lm = GemmaLM(GemmaConfig.preset("tiny"))
    params = nn.meta.unbox(lm.module.init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32)))
    upstream = JaxUpstream("unused.gguf", max_batch=1, max_wait_ms=1)
    # The backend reads its file only while it holds no model: a tiny random Gemma stands in.
    backend = upstream.backend
    backend._lm, backend._params, backend._tokenizer = lm, params, _ByteTokenizer()
    request = Request(id="r", prompt="Say something.", messages=(), seed=3)
    try:
        pools = {n: upstream.generate("completions", "gemma", request,
                                      SamplingParams(num_samples=2, temperature=0.7,
                                                     max_new_tokens=n))[1]
                 for n in (3, 5, 11)}
    finally:
        upstream.close()
    executables = decode.compiled_count(lm)
    print("executables", executables, {n: [g.num_tokens for g in p] for n, p in pools.items()})
    assert executables == 1
    assert all([g.decoding for g in p] == ["greedy", "sample", "sample"] for p in pools.values())
    assert all(0 < g.num_tokens <= n for n, p in pools.items() for g in p)


@pytest.fixture(scope="module")
def model_dir(task_spm_path, tmp_path_factory) -> str:
    from _tiny_corrector import tiny_config, tiny_params, write_model_dir

    path = tmp_path_factory.mktemp("model_dir")
    write_model_dir(path, task_spm_path, tiny_params(tiny_config(task_spm_path)))
    return str(path)


@pytest.mark.slow
def test_cli_serves_a_model_dir_and_stops_on_sigterm(model_dir):
    import signal

    with FakeLLM() as llm:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lmcor.serve", f"--corrector={model_dir}",
             f"--upstream={llm.base_url}", "--port=0", "--max_batch_size=1",
             "--num_candidates=3"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
        try:
            line = proc.stdout.readline()
            assert "listening on http://127.0.0.1:" in line, line
            server = type("S", (), {"url": line.split()[-1]})
            # It listens before loading the corrector: "starting" is told apart from "dead".
            status, body = healthz(server)
            assert status == 503 and body["status"] == "warming_up", body
            assert post(server, "/v1/completions", {"prompt": PROMPT})[0] == 503
            wait_ready(server)
            status, reply = post(server, "/v1/completions",
                                 {"prompt": PROMPT, "lmcor": {"return_candidates": True}})
            assert status == 200 and len(reply["lmcor"]["candidates"]) == 3
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            out = proc.stdout.read()
            assert "ready after " in out and "stopped" in out
        finally:
            if proc.poll() is None:
                proc.kill()


def test_cli_takes_bare_gin_strings_for_the_corrector(tmp_path, capsys):
    """`--gin.NAME=path` without inner quotes reaches the corrector's configurables: here the
    vocabulary, whose missing file is the first thing loading the corrector trips on."""
    import gin

    from lmcor import serve

    try:
        code = serve.main([f"--corrector={tmp_path}", "--upstream=http://127.0.0.1:9/v1",
                           "--port=0", "--gin.task_vocabulary.spm_model=no/such/vocab.model"])
    finally:
        gin.clear_config()
    # The server was up (warming up) when loading failed: it stops, and says why in one line.
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(r"start-up failed: FileNotFoundError: .*no/such/vocab\.model: no such file",
                     err), err


def run_cli(args, env=None, timeout_s: float = 60.0):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lmcor.serve", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=timeout_s)
    return proc, time.monotonic() - start


@pytest.mark.parametrize("case", ["upstream", "auth_token_env", "port", "corrector"])
def test_cli_refuses_bad_flags_before_loading(model_dir, case):
    """Flags that cannot work are refused in one line within seconds, not after the minutes of
    loading and compiling the corrector (which the valid MODEL_DIR here would go on to)."""
    env = {k: v for k, v in os.environ.items() if k != "LMCOR_TEST_UNSET_TOKEN"}
    args = {"corrector": model_dir, "upstream": "http://127.0.0.1:9/v1", "port": "0",
            "max_batch_size": "1"}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args.update({
            "upstream": {"upstream": "ftp://x"},
            "auth_token_env": {"auth_token_env": "LMCOR_TEST_UNSET_TOKEN"},
            "port": {"port": str(busy.getsockname()[1])},
            "corrector": {"corrector": os.path.join(model_dir, "no_such_run")},
        }[case])
        proc, seconds = run_cli([f"--{k}={v}" for k, v in args.items()], env=env)
    want = {"upstream": r"--upstream=ftp://x: expected an http\(s\):// base URL",
            "auth_token_env": r"--auth_token_env=LMCOR_TEST_UNSET_TOKEN: .* unset",
            "port": r"--port=\d+: 127\.0\.0\.1:\d+ is already in use",
            "corrector": r"--corrector=.*no_such_run: no such folder"}[case]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert re.fullmatch(r"lmcor serve: error: " + want + ".*", lines[0]), lines[0]
    assert seconds < 10, seconds


def test_help_describes_every_flag_and_returns_fast():
    from lmcor import serve

    for action in serve._flags()._actions:
        if action.dest != "help":
            text = (action.help or "") % {"default": action.default}
            assert re.search(r"\((required|[^()]*default: [^)]+)\)$", text), (action.dest, text)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lmcor.cli", "serve", "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert "--gin_file" in proc.stdout and "--gin.NAME=VALUE" in proc.stdout
    assert seconds < 2.0, seconds
    # Fast because importing the command pulls in neither JAX nor TensorFlow.
    probe = ("import sys; from lmcor import serve; "
             "print([m for m in ('jax', 'tensorflow', 'lmcor.corrector') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=REPO, timeout=60).stdout
    assert out.strip() == "[]", out
