"""The micro-batcher of `lmcor serve` (lmcor/serve/batcher.py) and the batch-size metrics
(lmcor/serve/metrics.py): concurrent requests reach the corrector together."""
import concurrent.futures

import pytest

from lmcor.inference.settings import row_buckets
from lmcor.serve.prometheus import Metrics

from _llm_server import FakeLLM
from _serve_client import metric, metrics, post, serving
from _tiny_corrector import shared_corrector


@pytest.fixture(scope="module")
def corrector(task_spm_path):
    return shared_corrector(task_spm_path)


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


def test_metrics_batch_edges_are_the_corrector_row_buckets():
    assert all(Metrics(n).batch_edges == row_buckets(n) for n in range(1, 40))
