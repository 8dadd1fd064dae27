"""Sampling throughput: the sampling job's JAX backend vs transformers `generate`, same prompts.

    .venv/bin/python benchmarks/sample_job.py --n 8 --batch_size 8 --max_new_tokens 32

Runs `lmcor.sampling.job.sample_pool` with the real Gemma 3 270M on the first N E2E test inputs (5-shot,
greedy + 4 samples at T=0.6), then feeds the very same token ids (left-padded, same batch size)
to transformers' Gemma3ForCausalLM loaded from the same GGUF. Reports generated tokens/s for
both (compilation excluded for JAX; reported apart), their ratio, and the fraction of padded
prompt positions. Never part of the test run.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lmcor.sampling import job as sample, prompts  # noqa: E402
from lmcor.sampling.backends.base import SamplingParams  # noqa: E402
from lmcor.sampling.backends.jax_lm import JaxBackend  # noqa: E402
from lmcor.checkpoints.bundled import bundled_gemma_gguf_path  # noqa: E402
from lmcor.paths import data_root  # noqa: E402


def run_job(args, out_dir):
    backend = JaxBackend(checkpoint="gemma3-270m", batch_size=args.batch_size,
                         per_example_seed=False, dtype=args.dtype,
                         shared_prefill=args.shared_prefill, quantize=args.quantize)
    start = time.perf_counter()
    manifest = sample.sample_pool(
        output_dir=out_dir, task="e2e", split="test", demo_split="dev", backend=backend,
        prompt=prompts.PromptConfig("e2e_attributes", num_shots=5), max_examples=args.n,
        shard_size=args.n, batch_size=args.batch_size,
        sampling=SamplingParams(num_samples=args.num_samples, temperature=0.6,
                                max_new_tokens=args.max_new_tokens))
    stats = manifest["backend_stats"]
    return backend, {"generated_tokens": stats["generated_tokens"],
                     "decode_s": round(stats["decode_s"], 2),
                     "compile_s": round(stats["compile_s"], 2),
                     "job_wall_s": round(time.perf_counter() - start, 2),
                     "tokens_per_s": stats["generated_tokens"] / stats["decode_s"],
                     "padding_fraction": stats["padding_fraction"]}


def job_prompt_ids(args, tokenizer):
    examples = sample.load_split("e2e", data_root(), "test", "evaluation")[:args.n]
    demos = sample.load_split("e2e", data_root(), "dev", "training")
    builder = prompts.PromptBuilder(prompts.PromptConfig("e2e_attributes", num_shots=5), demos)
    built = builder.build(examples)
    # The job decodes prompts sorted by length; so does this, for the same padding.
    return sorted((tokenizer.encode(b["prompt"], add_bos=True) for b in built), key=len)


def run_transformers(args, ids, pad_id, eos_id):
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    path = bundled_gemma_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    tokens = elapsed = 0.0
    for start in range(0, len(ids), args.batch_size):
        chunk = ids[start:start + args.batch_size]
        width = max(map(len, chunk))
        input_ids = torch.tensor([[pad_id] * (width - len(c)) + c for c in chunk])
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk])
        for kw in ({"do_sample": False},
                   {"do_sample": True, "temperature": 0.6, "top_p": 1.0, "top_k": 0,
                    "num_return_sequences": args.num_samples}):
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, attention_mask=mask, pad_token_id=pad_id,
                                     eos_token_id=eos_id, max_new_tokens=args.max_new_tokens, **kw)
            elapsed += time.perf_counter() - t0
            new = out[:, width:]
            # Count up to and including each row's first EOS, as the JAX side does.
            for row in new.tolist():
                tokens += row.index(eos_id) + 1 if eos_id in row else len(row)
    return {"generated_tokens": int(tokens), "generate_s": round(elapsed, 2),
            "tokens_per_s": tokens / elapsed}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_samples", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="our weights and compute (transformers stays float32)")
    parser.add_argument("--shared_prefill", action="store_true",
                        help="greedy and samples from one prefill (JaxBackend.shared_prefill)")
    parser.add_argument("--quantize", default=None, choices=["int8"],
                        help="int8 matmuls in the JAX backend (JaxBackend.quantize)")
    parser.add_argument("--skip_transformers", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out_dir:
        backend, ours = run_job(args, out_dir)
    result = {"setup": vars(args), "lmcor_job": ours}
    if not args.skip_transformers:
        tok = backend.tokenizer
        ids = job_prompt_ids(args, tok)
        theirs = run_transformers(args, ids, int(tok.pad_id), int(tok.eos_id))
        result["transformers_generate"] = theirs
        result["speedup"] = round(ours["tokens_per_s"] / theirs["tokens_per_s"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
