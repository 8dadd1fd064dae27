"""`lmcor serve` under load: N concurrent clients against a real upstream on loopback.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/serve.py [--clients=32 --requests=200]
        [--passes=2] [--corrector=MODEL_DIR] [--upstream_delay_ms=50] [--max_batch_size=8]

The upstream is the scripted OpenAI-compatible server the tests use (a real HTTP server on
127.0.0.1 that answers after `--upstream_delay_ms`, standing in for an LLM's latency). Without
`--corrector`, the corrector is a random-weight T5 (v1.1 small by default) over a SentencePiece vocabulary trained
on real E2E text: its outputs mean nothing, but the serving work (HTTP, upstream fan-out,
preprocessing, batching, beam search) is all real. Prompts are real E2E and JFLEG sources.

Runs the same load with micro-batching and with max batch size 1, each right after the
server's start-up warm-up (`Corrector.warmup`: every decode shape compiled; its seconds are
reported); reports failures by cause, lost requests (sent but never answered), p50/p99
latency, throughput, the batching speed-up, RSS across passes, and the decode executables
compiled during the measured passes (0 when warm-up covered every shape the load produced).
"""
import argparse
import collections
import concurrent.futures
import ctypes
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

from lmcor.inference.corrector import Corrector  # noqa: E402
from lmcor.inference.settings import CorrectorSettings  # noqa: E402
from lmcor.serve.app import ServeApp  # noqa: E402
from lmcor.serve.server import Server  # noqa: E402
from lmcor.serve.upstream import HttpUpstream  # noqa: E402


def rss_mib(field: str = "VmRSS") -> float:
    """Resident memory (VmRSS; VmHWM is the peak so far). Freed heap is handed back to the OS
    first (glibc malloc_trim): warm-up's largest batches leave GBs cached in the allocator,
    which would hide a leak behind a fall."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status", encoding="ascii") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    return round(kb / 1024, 1)


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
    """-> (None or why it failed, seconds)."""
    body = json.dumps({"model": "bench", "prompt": prompt, "max_tokens": 32}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=900) as resp:
            failure = None if "choices" in json.loads(resp.read()) else "no choices"
    except urllib.error.HTTPError as e:
        failure = f"HTTP {e.code}: {e.read()[:120].decode('utf-8', 'replace')}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        failure = f"{type(e).__name__}: {e}"
    return failure, time.perf_counter() - start


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
    lat = np.array([s for failure, s in results if failure is None]) * 1000
    failures = collections.Counter(failure for failure, _ in results if failure is not None)
    return {"requests": len(prompts), "ok": len(lat), "failed": sum(failures.values()),
            "failures": dict(failures.most_common(5)),
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
    upstream = HttpUpstream(upstream_url, None, 60.0, 0, None)  # the CLI's default retries
    app = ServeApp(corrector, upstream, num_candidates=args.num_candidates,
                   max_batch_size=max_batch, max_wait_ms=args.max_wait_ms, decode_timeout_s=600)
    server = Server(("127.0.0.1", 0), app).start()
    try:
        out = {"max_batch_size": max_batch, "warmup": corrector.warmup(max_batch),
               "rss_mib": [rss_mib()], "passes": []}
        executables = scrape(server.url, "lmcor_decode_executables")
        for _ in range(args.passes):
            out["passes"].append(load_pass(server.url, prompts, args.clients,
                                           f"measured (batch<={max_batch})"))
            out["rss_mib"].append(rss_mib())
        out["compiled_while_serving"] = scrape(server.url, "lmcor_decode_executables") - executables
        out["upstream_connect_retries"] = scrape(server.url, "lmcor_upstream_retries_total")
        out["mean_batch_size"] = (scrape(server.url, "lmcor_batch_size_sum")
                                  / scrape(server.url, "lmcor_batch_size_count"))
        out["max_batch_seen"] = scrape(server.url, "lmcor_batch_size_max")
        out["peak_rss_mib"] = rss_mib("VmHWM")
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
    p.add_argument("--max_batch_size", type=int, default=8,
                   help="as `lmcor serve`; 16 measured the same throughput on 2 CPU cores")
    p.add_argument("--max_wait_ms", type=float, default=10.0)
    p.add_argument("--beam_size", type=int, default=4)
    p.add_argument("--max_decode_tokens", type=int, default=16)
    p.add_argument("--max_input_tokens", type=int, default=512,
                   help="longest corrector input accepted (these prompts give 218-283 tokens); "
                        "every width up to it is compiled at start-up")
    p.add_argument("--length_bucket", type=int, default=CorrectorSettings.length_bucket)
    p.add_argument("--length_growth", type=float, default=CorrectorSettings.length_growth,
                   help="ratio between decode widths: finer pads less, compiles more")
    p.add_argument("--out", default=None, help="also write the JSON report here")
    args = p.parse_args(argv)

    from _llm_server import FakeLLM

    settings = CorrectorSettings(beam_size=args.beam_size, max_decode_tokens=args.max_decode_tokens,
                                 max_input_tokens=args.max_input_tokens,
                                 length_bucket=args.length_bucket, length_growth=args.length_growth)
    with tempfile.TemporaryDirectory() as work:
        corrector = (Corrector.from_model_dir(args.corrector) if args.corrector
                     else random_corrector(args.data_dir, work, args.preset, settings))
        prompts = real_prompts(args.data_dir, args.requests)
        with FakeLLM(delay_s=args.upstream_delay_ms / 1000) as llm:
            batched = run_config(corrector, llm.base_url, prompts, args, args.max_batch_size)
            single = run_config(corrector, llm.base_url, prompts, args, 1)
    best = lambda r: max(x["throughput_rps"] for x in r["passes"])  # noqa: E731
    report = {"corrector": args.corrector or f"random T5 {args.preset}", "clients": args.clients,
              "requests_per_pass": args.requests,
              "upstream_delay_ms": args.upstream_delay_ms, "beam_size": args.beam_size,
              "max_decode_tokens": corrector.settings.max_decode_tokens,
              "decode_widths": corrector.settings.widths,
              "micro_batching": batched, "batch_size_1": single,
              "throughput_ratio_batched_vs_1": best(batched) / best(single)}
    text = json.dumps(report, indent=2)
    if args.out:
        from lmcor.io_utils import atomic_write_bytes
        atomic_write_bytes(args.out, text.encode())
    print(text)
    failures = sum(x["failed"] + x["lost"] for r in (batched, single) for x in r["passes"])
    compiled = sum(r["compiled_while_serving"] for r in (batched, single))
    return 1 if failures or compiled else 0


if __name__ == "__main__":
    sys.exit(main())
