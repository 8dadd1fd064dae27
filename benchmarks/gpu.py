"""Accelerator benchmark: T5 corrector training step (time, MFU), Gemma 3 sampling tokens/s,
T5 beam-search decode examples/s, on whatever device JAX sees first.

    .venv/bin/python benchmarks/gpu.py [--only train,sample,beam] [--steps 10] [--json OUT]

On an accelerator: T5-v1.1-base (bf16 compute, f32 params, Adafactor as in the paper) on
512-token inputs and 128-token targets; Gemma 3 270M (bf16) sampling 4 continuations at
temperature 0.6; T5-base beam search (beam 4). On CPU it says so and runs tiny sizes instead:
those figures only show that the script works.

Weights are random. Throughput does not depend on their values, and random weights rarely emit
EOS, so every row decodes to the full length and runs are comparable.

MFU = model FLOPs per step / (step time x peak dense bf16 FLOPs of the device), with model
FLOPs = 6 x (encoder params x input tokens + decoder params x target tokens). This is 6·N·D
applied per stack, because each stack only sees its own tokens. Embedding lookups and
attention-score FLOPs are not counted. An unknown device prints MFU n/a.
"""
import argparse
import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from lmcor import decode
from lmcor.models.gemma import Gemma3, GemmaConfig, GemmaLM
from lmcor.models.t5 import T5, T5Config, T5LM

# Peak dense (no sparsity) bf16 FLOP/s per device from the vendors' data sheets. The first
# substring of `device_kind` that matches wins, so more specific names come first.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
    ("A100", 312e12), ("L4", 121e12), ("TPU v4", 275e12), ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12), ("TPU v6 lite", 918e12),
)

SIZES = {
    "accelerator": dict(t5="base", batch=64, src_len=512, tgt_len=128, gemma="270m",
                        sample_batch=16, prompt_len=256, new_tokens=128, num_samples=4,
                        beam_batch=32, beam=4, beam_tokens=128),
    "cpu": dict(t5="tiny", batch=4, src_len=64, tgt_len=16, gemma="tiny", sample_batch=2,
                prompt_len=16, new_tokens=8, num_samples=4, beam_batch=2, beam=2, beam_tokens=8),
}


def peak_flops(device) -> float | None:
    if device.platform == "cpu":
        return None
    kind = getattr(device, "device_kind", "")
    return next((peak for name, peak in PEAK_BF16_FLOPS if name in kind), None)


def _tokens(rng, shape, vocab: int) -> np.ndarray:
    # Ids 0..2 are padding, EOS and BOS in both models; random text avoids them.
    return rng.integers(3, vocab, shape, dtype=np.int32)


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _init(module, *args):
    init = jax.jit(lambda key: nn.unbox(module.init(key, *args)["params"]))
    return init(jax.random.key(0))


def _t5_batch(rng, cfg, size):
    src = _tokens(rng, (size["batch"], size["src_len"]), cfg.vocab_size)
    tgt = _tokens(rng, (size["batch"], size["tgt_len"]), cfg.vocab_size)
    dec_in = np.concatenate([np.full_like(tgt[:, :1], cfg.decoder_start_id), tgt[:, :-1]], axis=1)
    return {"src": src, "dec_in": dec_in, "tgt": tgt}


def make_train_step(model, optimizer):
    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["src"], batch["dec_in"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["tgt"]).mean()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def bench_train(size, steps: int, peak: float | None) -> dict:
    cfg = T5Config.preset(size["t5"], dtype="bfloat16", dropout_rate=0.0)
    model = T5(cfg)
    batch = {k: jnp.asarray(v) for k, v in _t5_batch(np.random.default_rng(0), cfg, size).items()}
    params = _init(model, batch["src"][:1], batch["dec_in"][:1])
    optimizer = optax.adafactor(1e-3)
    opt_state = jax.jit(optimizer.init)(params)
    step = make_train_step(model, optimizer)
    start = time.perf_counter()
    params, opt_state, loss = step(params, opt_state, batch)
    float(loss)  # the first step includes compilation
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, batch)
    final_loss = float(loss)
    step_s = (time.perf_counter() - start) / steps
    flops = 6 * (_count(params["encoder"]) * batch["src"].size + _count(params["decoder"]) * batch["tgt"].size)
    return {"model": f"t5-{size['t5']}", "params": _count(params), "batch": size["batch"],
            "src_len": size["src_len"], "tgt_len": size["tgt_len"], "compile_s": compile_s,
            "step_s": step_s, "tokens_per_s": (batch["src"].size + batch["tgt"].size) / step_s,
            "model_tflops_per_step": flops / 1e12, "final_loss": final_loss,
            "mfu": flops / (step_s * peak) if peak else None}


def _timed_decode(lm, params, batch, config) -> decode.Decoded:
    decode.decode_batch(lm, params, batch, config)  # compiles; later calls reuse it
    return decode.decode_batch(lm, params, batch, config, seed=1)


def bench_sample(size) -> dict:
    cfg = GemmaConfig.preset(size["gemma"], dtype="bfloat16", param_dtype="bfloat16")
    module = Gemma3(cfg)
    tokens = _tokens(np.random.default_rng(1), (size["sample_batch"], size["prompt_len"]), cfg.vocab_size)
    params = {"params": _init(module, jnp.asarray(tokens[:1]))}
    config = decode.DecodeConfig(max_new_tokens=size["new_tokens"], temperature=0.6,
                                 num_samples=size["num_samples"])
    out = _timed_decode(GemmaLM(module), params, {"tokens": tokens, "mask": np.ones_like(tokens, bool)}, config)
    generated = int(out.lengths.sum())
    return {"model": f"gemma3-{size['gemma']}", "params": _count(params), "prompts": len(tokens),
            "prompt_len": size["prompt_len"], "samples_per_prompt": size["num_samples"],
            "generated_tokens": generated, "decode_s": out.timing["decode_s"],
            "tokens_per_s": generated / out.timing["decode_s"]}


def bench_beam(size) -> dict:
    cfg = T5Config.preset(size["t5"], dtype="bfloat16", dropout_rate=0.0)
    model = T5(cfg)
    src = _tokens(np.random.default_rng(2), (size["beam_batch"], size["src_len"]), cfg.vocab_size)
    params = _init(model, jnp.asarray(src[:1]), jnp.asarray(src[:1, :1]))
    config = decode.DecodeConfig(max_new_tokens=size["beam_tokens"], beam_size=size["beam"])
    out = _timed_decode(T5LM(model), params, {"encoder_tokens": src}, config)
    return {"model": f"t5-{size['t5']}", "examples": len(src), "src_len": size["src_len"],
            "beam": size["beam"], "max_new_tokens": size["beam_tokens"],
            "mean_output_len": float(out.lengths.mean()), "decode_s": out.timing["decode_s"],
            "examples_per_s": len(src) / out.timing["decode_s"]}


def _print(name: str, result: dict) -> None:
    def fmt(v):
        if v is None:
            return "n/a"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    print(f"{name:>7}: " + ", ".join(f"{k}={fmt(v)}" for k, v in result.items()), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="train,sample,beam")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--batch", type=int, help="override the training batch size")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    size = dict(SIZES["cpu" if on_cpu else "accelerator"], **({"batch": args.batch} if args.batch else {}))
    peak = peak_flops(device)
    print(f"device: {device.platform} / {getattr(device, 'device_kind', '?')} x{jax.device_count()}; "
          f"jax {jax.__version__}; peak bf16 {peak / 1e12 if peak else 'n/a'} TFLOP/s")
    if on_cpu:
        print("CPU only: no accelerator is visible, so this run uses tiny models and its figures "
              "say nothing about GPU/TPU speed (MFU n/a).")
    benches = {"train": lambda: bench_train(size, args.steps, peak),
               "sample": lambda: bench_sample(size), "beam": lambda: bench_beam(size)}
    results = {"device": {"platform": device.platform, "kind": getattr(device, "device_kind", None),
                          "count": jax.device_count(), "peak_bf16_flops": peak}}
    for name in args.only.split(","):
        if name not in benches:
            parser.error(f"--only: unknown benchmark {name!r}; choose from {sorted(benches)}")
        results[name] = benches[name]()
        _print(name, results[name])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
