"""Generation speed: lmcor's jitted decoder vs transformers `generate`, same GGUF, one run.

    .venv/bin/python benchmarks/sampling.py [--max_new_tokens=64] [--dtype=bfloat16]
                                            [--quantize=int8]

Gemma 3 270M (the Q4_K_M GGUF dequantized to float32 by both sides), 16 varied prompts as one
left-padded batch, greedy and sampling (temperature 0.7, top-k 50, top-p 0.95). Our compile and
a warm-up run are excluded; transformers also gets a warm-up generate. Tokens/s counts generated
tokens up to and including EOS (rows that end early do not count their padding).
"""
import argparse
import os
import sys
import time

import numpy as np

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Translate to German: The weather is nice today.",
    "Once upon a time, in a small village by the sea,",
    "The three laws of thermodynamics are",
    "Q: What is 17 times 23?\nA:",
    "import numpy as np\n\n# Compute the mean of each column",
    "Dear hiring manager,",
    "La tour Eiffel est",
    "Photosynthesis converts",
    "SELECT name, COUNT(*) FROM orders",
    "The best way to learn a new language is",
    "In 1969, Neil Armstrong",
    "Ingredients: 2 eggs, 1 cup of flour,",
    "Die Hauptstadt von Deutschland ist",
    "Summarize: The meeting was postponed because the projector broke again.",
]
SAMPLING = dict(temperature=0.7, top_k=50, top_p=0.95)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_ours(path, max_new_tokens, dtype, quantize=None):
    from lmcor import decode
    from lmcor.checkpoints.loader import load_gemma_lm

    (lm, params, tokenizer), load_s = _timed(
        lambda: load_gemma_lm(f"gguf:{path}", dtype, quantize))
    results = {}
    for mode, extra in (("greedy", {}), ("sample", SAMPLING)):
        config = decode.DecodeConfig(max_new_tokens=max_new_tokens, **extra)
        run = lambda: decode.generate(lm, params, tokenizer, PROMPTS, config, seed=0,
                                      batch_size=len(PROMPTS))
        warm = run()  # compiles; its timing says how long compilation took
        out = run()
        results[mode] = (int(out.lengths.sum()), out.timing["decode_s"], out.texts)
        # Printed at once so that a run cut short still reports our side.
        print(f"ours {mode}: {results[mode][0] / results[mode][1]:.1f} tok/s, compile "
              f"{warm.timing['compile_s']:.1f}s", file=sys.stderr, flush=True)
    print(f"ours: load {load_s:.1f}s", file=sys.stderr)
    return results


def _hf_generated(gen, prompt_len, eos_id):
    counts = []
    for row in gen[:, prompt_len:].numpy():
        hits = np.flatnonzero(row == eos_id)
        counts.append(int(hits[0]) + 1 if hits.size else len(row))
    return counts


def run_hf(path, max_new_tokens):
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    where, name = os.path.split(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(where, gguf_file=name)
    tokenizer.padding_side = "left"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        where, gguf_file=name, dtype=torch.float32).eval()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    width = batch["input_ids"].shape[1]
    results = {}
    for mode, extra in (("greedy", dict(do_sample=False)), ("sample", dict(do_sample=True,
                                                                          **SAMPLING))):
        gen_kw = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **extra)
        torch.manual_seed(0)
        with torch.no_grad():
            model.generate(**batch, **{**gen_kw, "max_new_tokens": 2})  # warm-up
            gen, secs = _timed(lambda: model.generate(**batch, **gen_kw))
        counts = _hf_generated(gen, width, model.generation_config.eos_token_id)
        texts = [tokenizer.decode(row[width: width + n], skip_special_tokens=True)
                 for row, n in zip(gen, counts)]
        results[mode] = (sum(counts), secs, texts)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--quantize", default=None, choices=["int8"],
                   help="int8 weights and activations for our matmuls (lmcor generate --quantize)")
    p.add_argument("--skip_transformers", action="store_true")
    args = p.parse_args(argv)
    from lmcor.checkpoints.bundled import bundled_gemma_gguf_path

    path = bundled_gemma_gguf_path()
    ours = run_ours(path, args.max_new_tokens, args.dtype, args.quantize)
    theirs = {} if args.skip_transformers else run_hf(path, args.max_new_tokens)
    print(f"Gemma 3 270M, batch {len(PROMPTS)}, {args.max_new_tokens} new tokens, "
          f"{args.dtype}{' + int8 matmuls' if args.quantize else ''} (ours) / float32 "
          "(transformers)")
    for mode in ("greedy", "sample"):
        n, secs, texts = ours[mode]
        line = f"{mode:7s} ours {n / secs:7.1f} tok/s ({n} tokens, {secs:.2f}s)"
        if mode in theirs:
            hn, hsecs, htexts = theirs[mode]
            line += (f" | transformers {hn / hsecs:7.1f} tok/s ({hn} tokens, {hsecs:.2f}s)"
                     f" | ratio {(n / secs) / (hn / hsecs):.2f}x")
            if mode == "greedy":
                same = sum(a == b for a, b in zip(texts, htexts))
                shared = sum(len(os.path.commonprefix([a, b])) for a, b in zip(texts, htexts))
                line += (f" | identical greedy texts {same}/{len(texts)}, shared prefix "
                         f"{shared / max(1, sum(map(len, htexts))):.0%} of transformers' chars")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
