"""The OpenAI-compatible HTTP backend against a real server on loopback with scripted faults."""
import json
import logging

import pytest

from lmcor.sampling import job as sample
from lmcor.sampling.backends.base import Request, SamplingParams
from lmcor.sampling.backends.http import HttpBackend, HttpBackendError
from lmcor.data.pool import read_pool
from lmcor.sampling.prompts import PromptConfig

from _llm_server import RAMBLE, FakeLLM, reply_text

SECRET = "sk-test-never-log-me"


def _backend(server, **kw):
    args = dict(model="fake-llm", api_key_env="LMCOR_TEST_KEY", concurrency=4, timeout_s=0.5,
                max_retries=4, backoff_base_s=0.01, backoff_max_s=0.05, jitter_seed=0)
    return HttpBackend(base_url=server.base_url, **{**args, **kw})


def _requests(n):
    return [Request(f"ex{i}", f"prompt {i}", ({"role": "user", "content": f"p{i}"},), 100 + i)
            for i in range(n)]


def test_every_fault_is_retried_and_counted(monkeypatch):
    monkeypatch.setenv("LMCOR_TEST_KEY", SECRET)
    params = SamplingParams(num_samples=3, temperature=0.6, top_p=0.9, max_new_tokens=8,
                            stop=("\nX:",))
    faults = ["429", "500", "malformed", "hang", "short"]
    with FakeLLM(faults=faults) as server:
        backend = _backend(server)
        out = backend.generate(_requests(5), params)
    assert backend.stats()["retries"] == len(faults)
    assert backend.stats()["retries_by_reason"] == {
        "http_429": 1, "http_500": 1, "malformed_json": 1, "timeout": 1, "malformed_reply": 1}
    for i, gens in enumerate(out):
        assert [g.decoding for g in gens] == ["greedy", "sample", "sample", "sample"]
        assert gens[0].text == reply_text(f"prompt {i}", 100 + i, 0.0, 0) + RAMBLE
        assert [g.text for g in gens[1:]] == [
            reply_text(f"prompt {i}", 100 + i, 0.6, k) + RAMBLE for k in range(3)]
    bodies = [b for _, b, _ in server.requests]
    sampled = [b for b in bodies if b["temperature"] > 0]
    assert all(b["n"] == 3 and b["top_p"] == 0.9 and b["stop"] == ["\nX:"] for b in sampled)
    assert all(h["Authorization"] == f"Bearer {SECRET}" for _, _, h in server.requests)


def test_chat_mode_sends_messages():
    with FakeLLM() as server:
        (gens,) = _backend(server, mode="chat").generate(_requests(1), SamplingParams(
            num_samples=1, max_new_tokens=4))
        path, body, _ = server.requests[0]
    assert path == "/v1/chat/completions" and body["messages"][0]["content"] == "p0"
    assert gens[0].text == reply_text(body["messages"], 100, 0.0, 0)


def test_client_errors_fail_at_once_and_exhausted_retries_name_the_example(monkeypatch):
    monkeypatch.setenv("LMCOR_TEST_KEY", SECRET)
    with FakeLLM(faults=["500"] * 10) as server:
        with pytest.raises(HttpBackendError, match="'ex0' failed after 3 attempts.*http_500"):
            _backend(server, max_retries=2, concurrency=1).generate(
                _requests(1), SamplingParams(num_samples=0))
    with FakeLLM(api_key="sk-the-right-one") as server:
        backend = _backend(server)
        with pytest.raises(HttpBackendError, match="HTTP 401") as err:
            backend.generate(_requests(1), SamplingParams(num_samples=0))
        assert backend.stats()["retries"] == 0 and len(server.requests) == 1
    # The server echoes the key it got; the error message redacts it.
    assert SECRET not in str(err.value)


def test_job_writes_every_example_once_and_reports_retries(tmp_path, data_dir, caplog,
                                                           monkeypatch):
    monkeypatch.setenv("LMCOR_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with FakeLLM(faults=["429", "hang", "500", "malformed", "short"]) as server:
        manifest = sample.sample_pool(
            output_dir=str(tmp_path), task="e2e", split="test", demo_split="dev",
            data_dir=str(data_dir), backend=_backend(server), max_examples=7, shard_size=3,
            batch_size=4, prompt=PromptConfig("e2e_attributes", num_shots=2),
            sampling=SamplingParams(num_samples=2, max_new_tokens=8))
    records = list(read_pool(str(tmp_path)))
    assert [r["id"] for r in records] == [f"e2e-test-{i:05d}" for i in range(7)]
    for r in records:
        assert len(r["candidates"]) == 3
        # The fake demonstration the server appends was cut by template post-processing.
        assert all(c["text"].startswith("out-") and "\n" not in c["text"]
                   for c in r["candidates"])
        assert r["candidates"][0]["prompt_id"] == "e2e_attributes"
    assert manifest["backend_stats"]["retries"] == 5
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["backend_stats"]["retries"] == 5 and on_disk["status"] == "complete"
    assert on_disk["counts"]["examples"] == 7 and on_disk["counts"]["candidates"] == 21
    assert SECRET not in caplog.text and SECRET not in (tmp_path / "manifest.json").read_text()
