"""`lmcor serve` in front of a failing, slow or in-process upstream: the client's status for
each failure, retried connections, and the in-process Gemma batching concurrent requests."""
import concurrent.futures
import os
import time

import pytest

from lmcor.cli import serve_command
from lmcor.serve.app import ServeApp
from lmcor.serve.server import Server
from lmcor.serve.upstream import JaxUpstream

from _llm_server import FakeLLM
from _serve_client import PROMPT, REPO, closed_port, metric, metrics, post, serving
from _tiny_corrector import shared_corrector


@pytest.fixture(scope="module")
def corrector(task_spm_path):
    return shared_corrector(task_spm_path)


def _documented_connect_retries() -> int:
    """--upstream_connect_retries's default as docs/serving.md's flag table states it."""
    with open(os.path.join(REPO, "docs", "serving.md"), encoding="utf-8") as f:
        row = next(line for line in f if line.startswith("| `--upstream_connect_retries`"))
    return int(row.split("|")[2])


def test_upstream_down_is_502_after_the_documented_attempts(corrector):
    retries = _documented_connect_retries()
    assert serve_command._flags().parse_args(["--corrector=x", "--upstream=http://h/v1"]) \
        .upstream_connect_retries == retries
    with serving(corrector, f"http://127.0.0.1:{closed_port()}/v1",
                 connect_retries=retries) as server:
        status, reply = post(server, "/v1/completions", {"prompt": PROMPT})
        text = metrics(server)
    assert status == 502 and "connection" in reply["error"]["message"]
    # The first call and each retry: what the client is told is what was done.
    assert f"failed after {retries + 1} attempts (last: connection)" in reply["error"]["message"]
    assert 'lmcor_upstream_errors_total{reason="bad_gateway"} 1' in text
    # Both of the request's calls (greedy, samples) were tried again, then gave up.
    assert metric(text, "lmcor_upstream_retries_total") == 2 * retries


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
    from lmcor.sampling.backends.base import Request, SamplingParams
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
