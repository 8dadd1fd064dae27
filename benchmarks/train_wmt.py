"""Corrector training speed on long rows: WMT paragraph LMCor examples, today's table recipe
against rows that read each input once for all its references, cut to length buckets, on one
core and on both; and the E2E LMCor rows on one core and on both.

    .venv/bin/python benchmarks/train_wmt.py [--records=40] [--only=wmt_packed_1core,...]

Data: `--records` paragraphs drawn at random (seed 0) from the WMT held-out setup's training
records (lmcor.tasks.wmt, wmt21 + wmt22 cut to wmt23's paragraph lengths), each with all its
references; the corrector input as gin/runs/tables/wmt.gin builds it (5 candidates, Gemma's
vocabulary, the output marker, inputs fitted to 2,047 tokens, references cut to 447 + EOS).
Every row of the table trains the gin/runs/gemma_corrector_fast.gin model (Gemma 3 270M from
the bundled GGUF, task vocabulary, lowest 12 layers and the embedding frozen, LoRA rank 16
above, AdamW) on exactly these examples:
- `wmt_packed_1core`: the table recipe as wmt.gin ran it: rows packed to 2,048 + 448 tokens,
  batch 4, 4 micro-batches, LM head on the first `auto` target positions, one core;
- `wmt_grouped_1core` / `wmt_grouped_2cores`: one row per input with all its references
  (lmcor.training.grouped_rows), batches of 4 rows grouped by length and cut to their bucket,
  LM head on the target positions only; one core / both cores in one process, float32;
- `wmt_grouped_2cores_bf16`: the same on both cores in bf16 (gin/runs/tables/wmt.gin's recipe);
- `e2e_packed_1core` / `e2e_packed_2cores`: `--e2e_pool`'s LMCor rows packed to 320 + 96, as
  gin/runs/tables/e2e.gin trains them (when the pool is given).

Steps are timed after every distinct batch shape has been compiled once (`compile_s` reports
that cost); the first epoch's cost is what is timed (the frozen stack runs every step). Each row
runs in a fresh process pinned to its cores, so peak RSS is its own. Prints the CPU, then one
JSON line per row (examples/s, target tokens/s, all tokens/s, step time, peak RSS), then the
ratios against `wmt_packed_1core` (and `e2e_packed_1core`).
"""
import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_gemma  # noqa: E402  (the shared data, RSS and CPU helpers)

MAX_IN, MAX_OUT = 2048, 448
BUCKETS = (256, 512, 768, 1024, 1536, 2048, 2560)


def wmt_examples(n_records: int, seed: int = 0) -> List[Dict[str, List[int]]]:
    """(inputs + EOS, reference + EOS) token lists of `n_records` random training paragraphs,
    an input's references in a row (as the SeqIO task yields them)."""
    from lmcor.checkpoints.bundled import bundled_gemma_gguf_path
    from lmcor.data.corrector_input import CorrectorOptions, build_corrector_input
    from lmcor.data.vocab import task_vocabulary
    from lmcor.tasks import wmt

    vocab = task_vocabulary(kind="gemma", gguf_path=bundled_gemma_gguf_path())
    opts = CorrectorOptions(output_marker=train_gemma.OUTPUT_MARKER, max_input_tokens=MAX_IN - 1)
    records = list(wmt.train_records())
    chosen = np.sort(np.random.default_rng(seed).choice(len(records), n_records, replace=False))
    out = []
    for i in chosen:
        text, _ = build_corrector_input(records[i], "lmcor", opts, vocab)
        inputs = list(vocab.encode(text)) + [vocab.eos_id]
        for ref in records[i]["references"]:
            out.append({"inputs": inputs,
                        "targets": list(vocab.encode(ref))[:MAX_OUT - 1] + [vocab.eos_id]})
    return out


def grouped(examples) -> Dict[str, np.ndarray]:
    from lmcor.training import grouped_rows

    groups = grouped_rows.group_examples((e["inputs"], e["targets"]) for e in examples)
    return grouped_rows.grouped_rows(groups, MAX_IN + MAX_OUT, train_gemma.GEMMA_BOS)


def run_recipe(rows: Dict[str, np.ndarray], cores: List[int], batch: int, microbatches: int,
               length_buckets: Optional[tuple], max_steps: Optional[int],
               dtype: str = "float32") -> Dict:
    """The trainer's step (lmcor.training.loop.build_step) on `rows` in order: every batch
    shape is compiled first, then up to `max_steps` steps (all rows when None) are timed."""
    os.sched_setaffinity(0, set(cores))  # before jax starts its thread pool
    import tempfile

    import jax

    from lmcor.training import batches, frozen_cache
    from lmcor.training.loop import _global_batch, _host_batch
    from lmcor.training.builders import gemma_model

    start = time.perf_counter()
    model = gemma_model(gguf="bundled", loss_positions="auto", vocab="task", lora_rank=16,
                        lora_alpha=32, freeze_embeddings=True, freeze_layers=12,
                        cache_frozen=True, dtype=dtype)
    work = tempfile.mkdtemp(prefix="lmcor_bench_")
    model, source, mesh, state, step_fn, frozen = train_gemma.prepared_step(
        model, rows, work, batch, 3e-4, length_buckets, microbatches)
    cache = frozen_cache.FrozenCache(model, work, source, frozen, mesh)
    n_rows = len(rows["decoder_input_tokens"])
    steps = -(-n_rows // batch) if max_steps is None else max_steps
    load_s = time.perf_counter() - start

    def device_batch(s):
        host = _host_batch(source, s)
        b = _global_batch(host, mesh)
        # Filling the frozen cache is what the first epoch computes for every row.
        cache.done[:] = False
        b["frozen_hidden"] = cache.hidden(source.row_ids(s), b)
        return host, b

    compile_start = time.perf_counter()
    shapes = {}
    with jax.set_mesh(mesh):
        for s in range(steps):  # one step per distinct shape, untimed
            host, b = device_batch(s)
            key = tuple(v.shape for v in host.values())
            if key not in shapes:
                shapes[key] = s
                state, metrics = step_fn(state, b, frozen)
                jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - compile_start
        train_gemma.reset_peak_rss()
        counts, timed_start = np.zeros(3, np.int64), time.perf_counter()
        for s in range(steps):
            host, b = device_batch(s)
            state, metrics = step_fn(state, b, frozen)
            jax.block_until_ready(metrics)
            counts += (batches.row_examples(host).sum(),
                       int((host["decoder_loss_weights"] > 0).sum()),
                       int((host["decoder_segment_ids"] > 0).sum()))
    secs = time.perf_counter() - timed_start
    return {"examples_per_s": counts[0] / secs, "target_tokens_per_s": counts[1] / secs,
            "tokens_per_s": counts[2] / secs, "step_s": secs / steps, "steps": steps,
            "timed_examples": int(counts[0]), "shapes": len(shapes), "compile_s": compile_s,
            "load_s": load_s, "vocab": model.config.vocab_size,
            "peak_rss_bytes": train_gemma.peak_rss_bytes()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=24, help="WMT training paragraphs drawn")
    p.add_argument("--packed_steps", type=int, default=2,
                   help="timed steps of the packed recipes (their rows are alike)")
    p.add_argument("--e2e_pool", default=None, help="E2E pool folder for the e2e rows")
    p.add_argument("--e2e_examples", type=int, default=96)
    p.add_argument("--only", default=None, help="comma-separated row names")
    args = p.parse_args(argv)

    examples = wmt_examples(args.records)
    packed = train_gemma.pack_rows(examples, MAX_IN, MAX_OUT)
    groups = grouped(examples)
    one, both = [0], sorted(os.sched_getaffinity(0))
    f32, bf16 = "float32", "bfloat16"
    table = {
        "wmt_packed_1core": (packed, one, 4, 4, None, args.packed_steps, f32),
        "wmt_grouped_1core": (groups, one, 4, 4, BUCKETS, None, f32),
        "wmt_grouped_2cores": (groups, both, 4, 4, BUCKETS, None, f32),
        "wmt_grouped_2cores_bf16": (groups, both, 4, 4, BUCKETS, None, bf16),
    }
    if args.e2e_pool:
        e2e = train_gemma.pack_rows(train_gemma.e2e_rows(args.e2e_pool, args.e2e_examples))
        table["e2e_packed_1core"] = (e2e, one, 4, 1, None, None, f32)
        table["e2e_packed_2cores"] = (e2e, both, 4, 1, None, None, f32)
    wanted = list(table) if args.only is None else args.only.split(",")
    print(json.dumps({**train_gemma.cpu_info(), "cores": len(both), "records": args.records,
                      "examples": len(examples), "packed_rows": len(packed["decoder_segment_ids"]),
                      "grouped_rows": len(groups["decoder_segment_ids"]),
                      "tokens_packed": int((packed["decoder_segment_ids"] > 0).sum()),
                      "tokens_grouped": int((groups["decoder_segment_ids"] > 0).sum())}),
          flush=True)
    results = {}
    for name in wanted:
        results[name] = train_gemma._run_isolated(_row, (name, table[name]), None)
        print(json.dumps({"row": name, **{k: round(v, 3) if isinstance(v, float) else v
                                          for k, v in results[name].items()}}), flush=True)
    for base in ("wmt_packed_1core", "e2e_packed_1core"):
        if base in results:
            print(json.dumps({"speedup_vs": base, **{
                n: round(r["examples_per_s"] / results[base]["examples_per_s"], 2)
                for n, r in results.items() if n.split("_")[0] == base.split("_")[0]}}),
                flush=True)


def _row(spec, _args) -> Dict:
    _name, (rows, cores, batch, micro, buckets, steps, dtype) = spec
    return run_recipe(rows, cores, batch, micro, buckets, steps, dtype)


if __name__ == "__main__":
    main()
