"""T5 corrector decoding speed: lmcor's jitted decoder (T5LM + KV cache) vs transformers `generate`.

    .venv/bin/python benchmarks/t5_decoding.py [--preset=small] [--batch=16] [--src_len=64]
                                               [--max_new_tokens=64] [--beam=1]

Both sides run the same random T5 v1.1 weights (a transformers model saved as safetensors and
loaded with `load_t5_safetensors`), float32 on CPU, on one right-padded batch of random source
ids. Our compile and a warm-up run are excluded; transformers also gets a warm-up. Tokens/s
counts generated tokens up to and including EOS. Greedy outputs must agree: the benchmark
prints how many rows differ (random weights make near-ties, so one or two may).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np


def _hf_model(preset: str, out_dir: str):
    import torch
    import transformers

    from lmcor.models.t5 import T5Config

    c = T5Config.preset(preset)
    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.d_kv, d_ff=c.d_ff, num_heads=c.num_heads,
        num_layers=c.num_encoder_layers, num_decoder_layers=c.num_decoder_layers,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    model.lm_head.weight = torch.nn.Parameter(torch.randn(c.vocab_size, c.d_model) * c.d_model ** -0.5)
    model.save_pretrained(out_dir, safe_serialization=True)
    return model


def _source_batch(args, vocab_size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    ids = np.zeros((args.batch, args.src_len), np.int64)
    for row, n in enumerate(rng.integers(args.src_len // 2, args.src_len + 1, args.batch)):
        ids[row, :n] = rng.integers(2, vocab_size, n)
        ids[row, n - 1] = 1  # sources end with EOS, as the corrector's inputs do
    return ids


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_ours(ckpt_dir: str, src: np.ndarray, args):
    import jax.numpy as jnp

    from lmcor import decode
    from lmcor.checkpoints.hf_t5 import load_t5_safetensors, t5_config_from_hf
    from lmcor.models.t5 import T5LM

    config = t5_config_from_hf(ckpt_dir, dropout_rate=0.0)
    params = load_t5_safetensors(ckpt_dir, config)
    lm, batch = T5LM(config), {"encoder_tokens": jnp.asarray(src, jnp.int32)}
    dc = decode.DecodeConfig(max_new_tokens=args.max_new_tokens, beam_size=args.beam)
    warm = decode.decode_batch(lm, params, batch, dc)
    out, seconds = _timed(lambda: decode.decode_batch(lm, params, batch, dc))
    print(f"ours: compile {warm.timing['compile_s']:.1f}s", file=sys.stderr)
    rows = [list(t[:n]) for t, n in zip(out.tokens, out.lengths)]
    return rows, seconds


def run_hf(model, src: np.ndarray, args):
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    ids, mask = torch.tensor(src), torch.tensor(src != 0)
    kw = dict(do_sample=False, num_beams=args.beam, max_new_tokens=args.max_new_tokens,
              early_stopping=True if args.beam > 1 else False)
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, **dict(kw, max_new_tokens=4))
        gen, seconds = _timed(lambda: model.generate(input_ids=ids, attention_mask=mask, **kw))
    rows = []
    for row in gen[:, 1:].numpy():  # drop decoder_start
        hits = np.flatnonzero(row == 1)
        rows.append(list(row[: hits[0] + 1] if hits.size else row))
    return rows, seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--src_len", type=int, default=64)
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--beam", type=int, default=1)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = _hf_model(args.preset, tmp)
        src = _source_batch(args, model.config.vocab_size)
        ours, ours_s = run_ours(tmp, src, args)
    theirs, theirs_s = run_hf(model, src, args)
    n_ours, n_theirs = sum(map(len, ours)), sum(map(len, theirs))
    differ = sum(a != b for a, b in zip(ours, theirs))
    print(f"T5 v1.1 {args.preset}, batch {args.batch}, src {args.src_len}, "
          f"{args.max_new_tokens} new tokens, beam {args.beam}, float32 CPU")
    print(f"lmcor        : {n_ours / ours_s:8.1f} tokens/s ({n_ours} tokens in {ours_s:.2f}s)")
    print(f"transformers : {n_theirs / theirs_s:8.1f} tokens/s ({n_theirs} tokens in {theirs_s:.2f}s)")
    ratio = (n_ours / ours_s) / (n_theirs / theirs_s)
    print(f"ratio        : {ratio:.2f}x; rows that differ: {differ}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
