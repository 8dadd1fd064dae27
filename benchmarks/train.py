"""Corrector training throughput: lmcor's trainer vs the paper's pipeline (transformers T5 +
Adafactor, batches dynamically padded to their longest example), same T5 config, same data.

    .venv/bin/python benchmarks/train.py [--records=256] [--batch=16] [--steps=20] [--d_model=128]

Data: real WMT22 en->de corrector examples (source + 3 system candidates -> each reference),
tokenized with a SentencePiece model trained on the pool. Ours packs examples into fixed-length
rows (seqio-style segment ids) and runs the jitted step (Adafactor, T5 defaults); theirs pads
each batch of `--batch` examples to its longest. Both count non-pad encoder + decoder tokens;
compile and the first steps are excluded. Prints both rates and the ratio (ours / theirs).
"""
import argparse
import itertools
import os
import time

import numpy as np


def examples(n_records: int, max_in: int, max_out: int):
    import seqio

    from lmcor.data.importers import import_wmt
    from lmcor.data.corrector_input import CorrectorOptions, build_corrector_input
    from lmcor.paths import data_root
    from lmcor.training.seqio_data import task_spm_model

    records = list(itertools.islice(import_wmt(data_root(), "wmt22"), n_records))
    vocab = seqio.SentencePieceVocabulary(task_spm_model(["wmt22"], 1000, max_records=300))
    opts = CorrectorOptions(k=3, max_input_tokens=max_in - 1)
    out = []
    for rec in records:
        src = list(vocab.encode(build_corrector_input(rec, "lmcor", opts, vocab)[0]))[:max_in - 1]
        for ref in rec["references"]:
            out.append((src + [1], list(vocab.encode(ref))[:max_out - 1] + [1]))
    return out, vocab.vocab_size


def pack(exs, max_in: int, max_out: int):
    """First-fit packing into rows of (max_in, max_out) tokens with segment ids and positions."""
    rows = []
    for enc, dec in exs:
        for r in rows:
            if r["ni"] + len(enc) <= max_in and r["no"] + len(dec) <= max_out and r["k"] < 32:
                break
        else:
            r = {"ni": 0, "no": 0, "k": 0, "parts": []}
            rows.append(r)
        r["parts"].append((enc, dec))
        r["ni"], r["no"], r["k"] = r["ni"] + len(enc), r["no"] + len(dec), r["k"] + 1
    feats = {k: np.zeros((len(rows), max_in if k.startswith("encoder") else max_out), np.int32)
             for k in ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
                       "decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
                       "decoder_positions")}
    for i, r in enumerate(rows):
        a = b = 0
        for s, (enc, dec) in enumerate(r["parts"], 1):
            feats["encoder_input_tokens"][i, a:a + len(enc)] = enc
            feats["encoder_segment_ids"][i, a:a + len(enc)] = s
            feats["encoder_positions"][i, a:a + len(enc)] = np.arange(len(enc))
            feats["decoder_target_tokens"][i, b:b + len(dec)] = dec
            feats["decoder_input_tokens"][i, b:b + len(dec)] = [0] + dec[:-1]
            feats["decoder_segment_ids"][i, b:b + len(dec)] = s
            feats["decoder_positions"][i, b:b + len(dec)] = np.arange(len(dec))
            a, b = a + len(enc), b + len(dec)
    feats["decoder_loss_weights"] = (feats["decoder_target_tokens"] > 0).astype(np.float32)
    return feats


def ours(exs, config, args):
    import jax

    from lmcor.models import partitioning
    from lmcor.models.t5 import T5
    from lmcor.training import batches, state as state_lib, step as step_lib
    from lmcor.training.builders import EncDecModel

    feats = pack(exs, args.max_in, args.max_out)
    rows = max(1, round(args.batch * len(feats["encoder_input_tokens"]) / len(exs)))
    model = EncDecModel(T5(config), config)
    mesh = partitioning.make_mesh(1, 1, jax.devices()[:1])
    schedule = state_lib.make_schedule("constant", 1e-3)
    opt = state_lib.make_optimizer(schedule)
    state, sh = state_lib.create_state(model.init_fn, opt, mesh, 0, model.rules)
    step = step_lib.make_train_step(model.loss_inputs, opt, schedule, sh, mesh)
    source = batches.BatchSource({0: feats}, 1, rows, seed=0)
    tokens, start = 0, None
    with jax.set_mesh(mesh):
        for s in range(args.steps + args.warmup):
            if s == args.warmup:
                jax.block_until_ready(state)
                tokens, start = 0, time.perf_counter()
            b = source.batch(s)
            state, m = step(state, b)
            tokens += int((b["encoder_input_tokens"] > 0).sum() + (b["decoder_target_tokens"] > 0).sum())
        jax.block_until_ready(state)
    return tokens / (time.perf_counter() - start), rows


def theirs(exs, config, args):
    import torch
    import transformers
    from transformers.optimization import Adafactor

    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.d_kv, d_ff=config.d_ff,
        num_heads=config.num_heads, num_layers=config.num_encoder_layers,
        num_decoder_layers=config.num_decoder_layers, feed_forward_proj="gated-gelu",
        tie_word_embeddings=False, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0)
    model = transformers.T5ForConditionalGeneration(cfg).train()
    opt = Adafactor(model.parameters(), lr=1e-3, scale_parameter=False, relative_step=False,
                    warmup_init=False)
    rng = np.random.default_rng(0)
    tokens, start = 0, None
    for s in range(args.steps + args.warmup):
        if s == args.warmup:
            tokens, start = 0, time.perf_counter()
        batch = [exs[i] for i in rng.integers(0, len(exs), args.batch)]
        li, lo = max(len(e) for e, _ in batch), max(len(d) for _, d in batch)
        ids = torch.zeros((len(batch), li), dtype=torch.long)
        labels = torch.full((len(batch), lo), -100, dtype=torch.long)
        for i, (e, d) in enumerate(batch):
            ids[i, :len(e)], labels[i, :len(d)] = torch.tensor(e), torch.tensor(d)
        loss = model(input_ids=ids, attention_mask=(ids > 0).long(), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        tokens += int((ids > 0).sum() + (labels >= 0).sum())
    return tokens / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=256)
    p.add_argument("--batch", type=int, default=16, help="examples per step (theirs)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max_in", type=int, default=256)
    p.add_argument("--max_out", type=int, default=96)
    p.add_argument("--d_model", type=int, default=128)
    args = p.parse_args()
    from lmcor.models.t5 import T5Config

    exs, vocab_size = examples(args.records, args.max_in, args.max_out)
    config = T5Config.preset("small", vocab_size=vocab_size, d_model=args.d_model,
                             d_ff=args.d_model * 2, num_heads=4, d_kv=args.d_model // 4,
                             num_encoder_layers=4, num_decoder_layers=4, dropout_rate=0.0)
    print(f"{len(exs)} examples; T5 d_model={config.d_model} 4+4 layers vocab={vocab_size}; "
          f"{os.cpu_count()} CPUs")
    rate_ours, rows = ours(exs, config, args)
    rate_theirs = theirs(exs, config, args)
    print(f"lmcor (packed rows of {args.max_in}/{args.max_out}, {rows} rows/step): "
          f"{rate_ours:,.0f} non-pad tokens/s")
    print(f"transformers + Adafactor (dynamic padding, {args.batch} examples/step): "
          f"{rate_theirs:,.0f} non-pad tokens/s")
    print(f"ratio (ours / theirs): {rate_ours / rate_theirs:.2f}x")


if __name__ == "__main__":
    main()
