"""`lmcor serve` under load: N concurrent clients against a real upstream on loopback.

    .venv/bin/python benchmarks/serve.py [--clients=32 --requests=200 --passes=2]
        [--corrector=MODEL_DIR] [--upstream_delay_ms=50] [--max_batch_size=16]

The upstream is the scripted OpenAI-compatible server the tests use (a real HTTP server on
127.0.0.1 that answers after `--upstream_delay_ms`, standing in for an LLM's latency). Without
`--corrector`, the corrector is a random-weight T5 (v1.1 small by default) over a SentencePiece vocabulary trained
on real E2E text: its outputs mean nothing, but the serving work (HTTP, upstream fan-out,
preprocessing, batching, beam search) is all real. Prompts are real E2E and JFLEG sources.

Runs the same load twice, with micro-batching and with max batch size 1, after an unmeasured
warm-up pass that compiles every shape; reports failures, lost requests (sent but never
answered), p50/p99 latency, throughput, the batching speed-up, and RSS across passes.
"""
import argparse
import concurrent.futures
import itertools
import json
import os
import pathlib
import sys
import tempfile
import time
import urllib.error
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy as np  # noqa: E402

from lmcor.corrector import Corrector, CorrectorSettings  # noqa: E402
from lmcor.serve import Server, ServeApp  # noqa: E402
from lmcor.upstream import HttpUpstream  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def real_prompts(data_dir: str, n: int):
    from lmcor.data.importers import import_e2e, import_jfleg

    recs = itertools.chain(import_e2e(data_dir, "dev"), import_jfleg(data_dir, "dev"))
    sources = [r["source"] for r in itertools.islice(recs, 400)]
    return [sources[(i * 7) % len(sources)] for i in range(n)]


def random_corrector(data_dir: str, work: str, preset: str,
                     settings: CorrectorSettings) -> Corrector:
    import seqio

    from _tiny_corrector import tiny_params
    from lmcor.models.t5 import T5Config
    from lmcor.data.importers import import_e2e
    from lmcor.data.vocab import pool_texts, train_task_sentencepiece

    spm = train_task_sentencepiece(pool_texts(itertools.islice(import_e2e(data_dir, "dev"), 300)),
                                   1000, os.path.join(work, "bench.model"))
    vocab = seqio.SentencePieceVocabulary(spm)
    config = T5Config.preset(preset, vocab_size=vocab.vocab_size, dropout_rate=0.0)
    return Corrector(config, tiny_params(config), vocab, settings=settings)


def one_request(url: str, prompt: str):
    body = json.dumps({"model": "bench", "prompt": prompt, "max_tokens": 32}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=900) as resp:
            ok = resp.status == 200 and "choices" in json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        ok = False
    return ok, time.perf_counter() - start


def load_pass(url: str, prompts, clients: int, desc: str) -> dict:
    from tqdm import tqdm

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(one_request, url, p) for p in prompts]
        with tqdm(total=len(futures), desc=desc, unit="req") as bar:
            for f in futures:
                f.add_done_callback(lambda _: bar.update(1))
            done, not_done = concurrent.futures.wait(futures, timeout=900)
    wall = time.perf_counter() - start
    results = [f.result() for f in done]
    lat = np.array([s for ok, s in results if ok]) * 1000
    return {"requests": len(prompts), "ok": len(lat), "failed": sum(not ok for ok, _ in results),
            "lost": len(not_done), "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
            "throughput_rps": len(lat) / wall, "wall_s": wall}


def scrape(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return float("nan")


def run_config(corrector, upstream_url, prompts, args, max_batch: int) -> dict:
    upstream = HttpUpstream(upstream_url, None, 60.0, 0, None)
    app = ServeApp(corrector, upstream, num_candidates=args.num_candidates,
                   max_batch_size=max_batch, max_wait_ms=args.max_wait_ms, decode_timeout_s=600)
    server = Server(("127.0.0.1", 0), app).start()
    try:
        corrector.warmup(max_batch)
        # Unmeasured: compiles every (rows, length) bucket this load produces.
        load_pass(server.url, prompts, args.clients, f"warm-up (batch<={max_batch})")
        out = {"max_batch_size": max_batch, "rss_mib": [round(rss_mib(), 1)], "passes": []}
        for _ in range(args.passes):
            out["passes"].append(load_pass(server.url, prompts, args.clients,
                                           f"measured (batch<={max_batch})"))
            out["rss_mib"].append(round(rss_mib(), 1))
        out["mean_batch_size"] = (scrape(server.url, "lmcor_batch_size_sum")
                                  / scrape(server.url, "lmcor_batch_size_count"))
        out["max_batch_seen"] = scrape(server.url, "lmcor_batch_size_max")
    finally:
        server.stop()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=200, help="requests per pass, all clients")
    p.add_argument("--passes", type=int, default=2, help="measured passes per configuration")
    p.add_argument("--corrector", default=None, help="MODEL_DIR (default: random-weight T5)")
    p.add_argument("--preset", default="small", help="T5 v1.1 size of the random corrector")
    p.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--upstream_delay_ms", type=float, default=50.0)
    p.add_argument("--num_candidates", type=int, default=5)
    p.add_argument("--max_batch_size", type=int, default=16)
    p.add_argument("--max_wait_ms", type=float, default=10.0)
    p.add_argument("--beam_size", type=int, default=4)
    p.add_argument("--max_decode_tokens", type=int, default=16)
    p.add_argument("--length_bucket", type=int, default=128,
                   help="coarser buckets mean fewer shapes to compile")
    p.add_argument("--out", default=None, help="also write the JSON report here")
    args = p.parse_args(argv)

    from _llm_server import FakeLLM

    settings = CorrectorSettings(beam_size=args.beam_size, max_decode_tokens=args.max_decode_tokens,
                                 max_input_tokens=1024,
                                 length_bucket=args.length_bucket)
    with tempfile.TemporaryDirectory() as work:
        corrector = (Corrector.from_model_dir(args.corrector) if args.corrector
                     else random_corrector(args.data_dir, work, args.preset, settings))
        prompts = real_prompts(args.data_dir, args.requests)
        with FakeLLM(delay_s=args.upstream_delay_ms / 1000) as llm:
            batched = run_config(corrector, llm.base_url, prompts, args, args.max_batch_size)
            single = run_config(corrector, llm.base_url, prompts, args, 1)
    best = lambda r: max(x["throughput_rps"] for x in r["passes"])  # noqa: E731
    report = {"corrector": args.corrector or f"random T5 {args.preset}", "clients": args.clients, "requests_per_pass": args.requests,
              "upstream_delay_ms": args.upstream_delay_ms, "beam_size": args.beam_size,
              "micro_batching": batched, "batch_size_1": single,
              "throughput_ratio_batched_vs_1": best(batched) / best(single)}
    text = json.dumps(report, indent=2)
    if args.out:
        from lmcor.io_utils import atomic_write_bytes
        atomic_write_bytes(args.out, text.encode())
    print(text)
    failures = sum(x["failed"] + x["lost"] for r in (batched, single) for x in r["passes"])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
