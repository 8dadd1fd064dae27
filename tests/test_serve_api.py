"""The OpenAI-compatible endpoints of `lmcor serve` (lmcor/serve/api.py, lmcor/serve/app.py)
against a real scripted upstream on loopback: reply shapes, the corrected text, `max_tokens`,
and the requests refused before the upstream is called."""
import json
import urllib.request

import pytest

from lmcor.data.pool_schema import pool_record

from _llm_server import RAMBLE, FakeLLM, reply_text
from _serve_client import PROMPT, metrics, post, serving
from _tiny_corrector import shared_corrector


@pytest.fixture(scope="module")
def corrector(task_spm_path):
    return shared_corrector(task_spm_path)


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
    # The same answer built without the server: the pool the scripted upstream writes for these
    # messages (seed 0, as the request sent none; greedy first, then the 4 samples at T=0.6),
    # the last turn as source, and the corrector run on it directly. The random corrector's
    # text barely depends on the source; the input's length in tokens does.
    pool = [reply_text(messages, 0, 0.0, 0)] + [reply_text(messages, 0, 0.6, i) for i in range(4)]
    assert [c["text"] for c in full["lmcor"]["candidates"]] == pool
    record = pool_record(messages[-1]["content"], pool)
    assert msg["content"] == corrector.correct([record])[0]
    assert reply["usage"]["prompt_tokens"] == len(corrector.prepare(record))


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


def test_too_long_source_is_413_before_the_upstream(corrector):
    with FakeLLM() as llm, serving(corrector, llm.base_url) as server:
        status, reply = post(server, "/v1/completions", {"prompt": "word " * 600})
        assert status == 413 and "too long" in reply["error"]["message"]
        assert llm.requests == []


def test_bearer_token(corrector):
    with FakeLLM() as llm, serving(corrector, llm.base_url, auth_token="s3cret") as server:
        assert post(server, "/v1/completions", {"prompt": PROMPT})[0] == 401
        status, reply = post(server, "/v1/completions", {"prompt": PROMPT}, token="wrong")
        assert status == 401 and reply["error"]["type"] == "auth_error"
        assert llm.requests == []
        assert post(server, "/v1/completions", {"prompt": PROMPT}, token="s3cret")[0] == 200
        with urllib.request.urlopen(server.url + "/healthz", timeout=10) as resp:
            assert json.loads(resp.read()) == {"status": "ok"}
