"""The decode shapes of `lmcor serve` (lmcor/serve/decoder.py) and its start-up
(`ServeApp.start`): what is compiled before the server is ready, /healthz on the way, and
that serving afterwards compiles nothing."""
import concurrent.futures
import dataclasses

import pytest

from lmcor.inference.corrector import Corrector
from lmcor.serve.decoder import Decoder

from _llm_server import FakeLLM
from _serve_client import (PROMPT, SMALL, healthz, metric, metrics, post, serving, starting,
                           wait_ready)
from _tiny_corrector import shared_corrector, tiny_corrector


@pytest.fixture(scope="module")
def corrector(task_spm_path):
    return shared_corrector(task_spm_path)


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
