"""Corrector training throughput of Gemma 3 270M: lmcor recipes vs what a user would otherwise
pick (transformers + PEFT LoRA, transformers full fine-tuning, torch on CPU).

    .venv/bin/python benchmarks/train_gemma.py --pool=DIR [--examples=64] [--batch=4]
        [--steps=4] [--warmup=1] [--rank=16] [--only=transformers_peft_lora,...]

Data: E2E LMCor training examples from a pool folder (source + candidates -> each reference),
built as the `e2e_lmcor` SeqIO task builds them under gin/runs/pipeline_gemma_cpu.gin, tokenized
with Gemma's own vocabulary, and packed into fixed [rows, max_in + max_out] rows by lmcor's
DecoderOnlyFeatureConverter. Every row of the table consumes the same packed rows in the same
order (`batch_rows`). Each row runs in a fresh process, so its peak RSS is its own.

Prints one JSON line with the CPU and the data, then one per measured row: examples/s (the
(record, reference) examples inside the timed rows), target tokens/s, all tokens/s, peak RSS
(whole process, and since the first step) and the bytes a checkpoint of what trains takes
(trained weights + AdamW moments, computed, not written).
"""
import argparse
import concurrent.futures
import functools
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GEMMA_BOS = 2
OUTPUT_MARKER = "<sep> output:"  # gin/runs/gemma_corrector.gin


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- data: pool -> SeqIO task features -> packed rows ----

def e2e_rows(pool_dir: str, n_examples: int, max_in: int = 320, max_out: int = 96,
             variant: str = "lmcor", train_only: bool = True) -> List[Dict[str, List[int]]]:
    """The first `n_examples` training examples of the pool, as the e2e SeqIO task yields them
    after tokenization: [{"inputs": ids + [EOS], "targets": ids + [EOS]}], one per (record,
    reference), in pool order.

    `inputs` is the corrector input (k=5 candidates, greedy first, ending in the output marker)
    fitted to `max_in - 1` tokens, the budget the task gives an `inputs` feature of length
    `max_in` that reserves its EOS; `targets` is the reference cut to `max_out - 1` tokens plus
    EOS (cuts are counted and logged). The prefix-LM sequence trained on is
    BOS + inputs[:-1] + targets: the converter drops the inputs' EOS.
    `train_only` skips the records the e2e task holds out of its dev pool for validation.
    """
    from lmcor.checkpoints.bundled import bundled_gemma_gguf_path
    from lmcor.data.pool import read_pool
    from lmcor.data.corrector_input import CorrectorOptions, build_corrector_input
    from lmcor.data.vocab import task_vocabulary
    from lmcor.tasks import common, e2e

    vocab = task_vocabulary(kind="gemma", gguf_path=bundled_gemma_gguf_path())
    opts = CorrectorOptions(output_marker=OUTPUT_MARKER, max_input_tokens=max_in - 1)
    out, cut_targets = [], 0
    for rec in read_pool(pool_dir):
        if train_only and common.in_holdout(e2e._group_key(rec), e2e.VALIDATION_PERCENT):
            continue
        text, _ = build_corrector_input(rec, variant, opts, vocab)
        inputs = list(vocab.encode(text))
        assert len(inputs) <= max_in - 1, "build_corrector_input exceeded its budget"
        for ref in rec["references"]:
            target = list(vocab.encode(ref))
            cut_targets += len(target) > max_out - 1
            out.append({"inputs": inputs + [vocab.eos_id],
                        "targets": target[:max_out - 1] + [vocab.eos_id]})
            if len(out) == n_examples:
                break
        if len(out) == n_examples:
            break
    if len(out) < n_examples:
        _log(f"{pool_dir}: only {len(out)} training examples, fewer than the {n_examples} asked")
    if cut_targets:
        _log(f"{cut_targets} of {len(out)} references cut to {max_out - 1} tokens (+ EOS)")
    return out


def pack_rows(examples: List[Mapping[str, List[int]]], max_in: int = 320,
              max_out: int = 96) -> Dict[str, np.ndarray]:
    """Task features -> the [rows, max_in + max_out] arrays lmcor's trainer reads, through the
    same DecoderOnlyFeatureConverter (seqio's in-order greedy packing), dtypes as
    lmcor.training.seqio_data gives them: decoder_input_tokens (BOS-shifted), _target_tokens,
    _loss_weights (float32, targets and their EOS only), _segment_ids (1.. per example, 0 pad),
    _positions (restarting per example)."""
    import tensorflow as tf

    from lmcor.data.feature_converters import DecoderOnlyFeatureConverter

    spec = tf.TensorSpec([None], tf.int32)
    ds = tf.data.Dataset.from_generator(lambda: iter(examples),
                                        output_signature={"inputs": spec, "targets": spec})
    converter = DecoderOnlyFeatureConverter(pack=True, bos_id=GEMMA_BOS)
    rows = list(converter(ds, {"inputs": max_in, "targets": max_out}).as_numpy_iterator())
    return {k: np.stack([r[k] for r in rows]).astype(
        np.float32 if k == "decoder_loss_weights" else np.int32) for k in rows[0]}


def batch_rows(packed: Mapping[str, np.ndarray], step: int, batch: int) -> Dict[str, np.ndarray]:
    """Step `step`'s `batch` rows, cycling through the packed rows in order: every side of the
    benchmark sees the same rows at the same step (no shuffle, so no RNG to keep in sync)."""
    n = len(packed["decoder_input_tokens"])
    idx = (np.arange(batch) + step * batch) % n
    return {k: v[idx] for k, v in packed.items()}


def batch_counts(b: Mapping[str, np.ndarray]) -> Tuple[int, int, int]:
    """(examples, target tokens, non-pad tokens) in a batch of packed rows."""
    seg = b["decoder_segment_ids"]
    return (int(seg.max(axis=1).sum()), int((b["decoder_loss_weights"] > 0).sum()),
            int((seg > 0).sum()))


# ---- the reference: transformers Gemma3ForCausalLM (+ PEFT) on torch CPU ----

def _load_reference(torch, threads: Optional[int]):
    import transformers

    from lmcor.checkpoints.bundled import bundled_gemma_gguf_path

    torch.set_num_threads(threads or os.cpu_count() or 1)
    path = bundled_gemma_gguf_path()
    # google/gemma-3-270m's published config, given so transformers does not parse the 262k-token
    # GGUF header twice (as tests/test_gemma_real.py loads it).
    config = transformers.Gemma3TextConfig(
        vocab_size=262_144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=512, max_position_embeddings=32_768, rms_norm_eps=1e-6)
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), config=config,
        dtype=torch.float32)


def reset_peak_rss() -> None:
    """Restart the kernel's high-water mark of this process, so that training is measured apart
    from loading (which dequantizes the whole GGUF)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux: the training peak then includes loading


def peak_rss_bytes() -> int:
    """Peak RSS since the last reset_peak_rss() (or process start)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    # No /proc: getrusage's peak, which includes loading.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _trained_bytes(model, opt) -> Tuple[int, int]:
    """(trained parameters, bytes of a checkpoint of them plus AdamW's moments)."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}  # tied weights once
    n = sum(p.numel() for p in params.values())
    weights = sum(p.numel() * p.element_size() for p in params.values())
    moments = sum(t.numel() * t.element_size() for state in opt.state.values()
                  for t in state.values() if hasattr(t, "numel"))
    return n, weights + moments


def reference(rows: Mapping[str, np.ndarray], mode: str, rank: int = 16, batch: int = 4,
              steps: int = 4, warmup: int = 1, lr: float = 1e-4,
              threads: Optional[int] = None) -> Dict:
    """Train transformers' Gemma3ForCausalLM (float32, from the bundled GGUF) on the packed rows:
    mode "peft" = PEFT LoRA of rank `rank`, alpha 2*rank, on every projection; "full" = all
    weights. AdamW at `lr`, no weight decay (as gin/runs/gemma_corrector.gin). Times `steps`
    optimizer steps after `warmup` untimed ones."""
    import torch
    from tqdm import tqdm

    if mode not in ("peft", "full"):
        raise ValueError(f"mode={mode!r}; expected 'peft' or 'full'")
    torch.manual_seed(0)
    start = time.perf_counter()
    model = _load_reference(torch, threads)
    if mode == "peft":
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(
            r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(LORA_TARGETS),
            task_type="CAUSAL_LM"))
    model.train()
    load_s = time.perf_counter() - start
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            weight_decay=0.0)
    counts, losses, timed_start = np.zeros(3, np.int64), [], None
    load_peak = peak_rss_bytes()
    reset_peak_rss()
    for s in tqdm(range(warmup + steps), desc=f"transformers {mode}", file=sys.stderr):
        if s == warmup:
            counts[:], timed_start = 0, time.perf_counter()
        b = batch_rows(rows, s, batch)
        ids = torch.from_numpy(b["decoder_input_tokens"]).long()
        # No segment ids in transformers: per-example positions with no attention mask make its
        # masking_utils build the block-diagonal causal mask of the packed examples (as
        # DataCollatorWithFlattening relies on), so attention and RoPE match lmcor's rows.
        pos = torch.from_numpy(b["decoder_positions"]).long()
        # Logits at every position, as passing labels= does: what a user gets.
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        w = torch.from_numpy(b["decoder_loss_weights"]) > 0
        target = torch.from_numpy(b["decoder_target_tokens"]).long()
        loss = torch.nn.functional.cross_entropy(logits[w].float(), target[w])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        counts += batch_counts(b)
    secs = time.perf_counter() - timed_start
    train_peak = peak_rss_bytes()
    n_params, ckpt = _trained_bytes(model, opt)
    return {"examples_per_s": counts[0] / secs, "target_tokens_per_s": counts[1] / secs,
            "tokens_per_s": counts[2] / secs, "step_s": secs / steps,
            "timed_examples": int(counts[0]), "trained_params": n_params,
            "checkpoint_bytes": ckpt, "load_s": load_s,
            # The first warm-up step's loss is equal in both modes (LoRA's B starts at 0); the
            # last is on other rows, so not a convergence figure.
            "loss_first": losses[0], "loss_last": losses[-1],
            "peak_rss_bytes": max(load_peak, train_peak), "train_peak_rss_bytes": train_peak,
            "attn": model.config._attn_implementation}


def _reference_row(rows, args, mode: str) -> Dict:
    return reference(rows, mode, args.rank, args.batch, args.steps, args.warmup,
                     threads=args.threads)


REFERENCE_ROWS: List[Tuple[str, Callable]] = [
    ("transformers_peft_lora", functools.partial(_reference_row, mode="peft")),
    ("transformers_full", functools.partial(_reference_row, mode="full")),
]

# ---- lmcor: the trainer's own step on the same rows, one row per recipe ----

def lmcor_recipe(rows: Mapping[str, np.ndarray], args, **options) -> Dict:
    """lmcor's jitted train step (gin/runs/gemma_corrector.gin: Gemma 3 270M from the bundled
    GGUF, float32, AdamW 1e-4, LM head on target positions only) with `options` added to
    `gemma_model`. With `cache_frozen`, every row's frozen-stack output is computed before the
    timed steps (`cache_fill_s`): the timed steps are what every epoch after the first costs;
    the first costs what the same recipe without the cache costs."""
    import tempfile

    import jax

    from lmcor.training import frozen_cache, state as state_lib
    from lmcor.training.loop import _global_batch
    from lmcor.training.builders import gemma_model

    start = time.perf_counter()
    model = gemma_model(gguf="bundled", loss_positions="auto", **options)
    work = tempfile.mkdtemp(prefix="lmcor_bench_")
    model, source, mesh, state, step_fn, frozen = prepared_step(model, rows, work, args.batch,
                                                                1e-4)
    load_s, fill_s = time.perf_counter() - start, 0.0
    cache = None
    if options.get("cache_frozen"):
        cache = frozen_cache.FrozenCache(model, work, source, frozen, mesh)
        fill_start = time.perf_counter()
        for s in range(-(-len(rows["decoder_input_tokens"]) // args.batch)):
            cache.hidden(source.row_ids(s), _global_batch(source.batch(s), mesh))
        fill_s = time.perf_counter() - fill_start
    counts, losses, timed_start = np.zeros(3, np.int64), [], None
    load_peak = peak_rss_bytes()
    reset_peak_rss()
    with jax.set_mesh(mesh):
        for s in range(args.warmup + args.steps):
            if s == args.warmup:
                counts[:], timed_start = 0, time.perf_counter()
            batch = _global_batch(source.batch(s), mesh)
            if cache is not None:
                batch["frozen_hidden"] = cache.hidden(source.row_ids(s), batch)
            state, metrics = step_fn(state, batch, frozen)
            losses.append(float(metrics["loss"]))
            counts += batch_counts(batch_rows(rows, s, args.batch))
    secs = time.perf_counter() - timed_start
    train_peak = peak_rss_bytes()
    return {"examples_per_s": counts[0] / secs, "target_tokens_per_s": counts[1] / secs,
            "tokens_per_s": counts[2] / secs, "step_s": secs / args.steps,
            "timed_examples": int(counts[0]),
            "trained_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))),
            "checkpoint_bytes": state_lib.nbytes(state.params) + state_lib.nbytes(state.opt_state),
            "vocab": model.config.vocab_size, "load_s": load_s, "cache_fill_s": fill_s,
            "loss_first": losses[0], "loss_last": losses[-1],
            "peak_rss_bytes": max(load_peak, train_peak), "train_peak_rss_bytes": train_peak}


def prepared_step(model, rows: Mapping[str, np.ndarray], work: str, batch: int, lr: float,
                  length_buckets=None, microbatches: int = 1):
    """(model, source, mesh, state, step, frozen): the trainer's jitted step for `model` on
    `rows` in order (AdamW at a constant `lr`, seed 0), on one device."""
    import jax

    from lmcor.models import partitioning
    from lmcor.training import batches, state as state_lib, step as step_lib
    from lmcor.training.loop import build_step

    source = batches.BatchSource({0: {k: v.copy() for k, v in rows.items()}}, 1, batch, 0,
                                  shuffle=False, length_buckets=length_buckets)
    model = model.prepare(work, source)
    model = model.fit_to_data(source.most_loss_tokens_per_row())
    mesh = partitioning.make_mesh(1, 1)
    schedule = state_lib.make_schedule("constant", lr)
    optimizer = state_lib.make_optimizer(schedule, name="adamw")
    state, step_fn, frozen = build_step(model, optimizer, schedule, mesh, 0)
    if microbatches != 1:
        sharding = lambda tree: jax.tree.map(lambda x: x.sharding, tree)  # noqa: E731
        step_fn = step_lib.make_train_step(model.loss_inputs, optimizer, schedule,
                                           sharding(state), mesh, num_microbatches=microbatches,
                                           frozen_shardings=sharding(frozen))
    return model, source, mesh, state, step_fn, frozen


def _lora(args, **more):
    return dict(lora_rank=args.rank, lora_alpha=2 * args.rank, freeze_embeddings=True, **more)


# Full fine-tuning, each option alone, and the combination: gemma_model options from the
# command line's args. LoRA rows freeze the embedding, as PEFT does; `freeze_layers` rows
# freeze the embedding and the lowest N layers.
RECIPE_OPTIONS: Dict[str, Callable] = {
    "lmcor_full_ft": lambda a: {},
    "lmcor_task_vocab": lambda a: {"vocab": "task"},
    "lmcor_frozen_embeddings": lambda a: {"freeze_embeddings": True},
    "lmcor_lora": lambda a: _lora(a),
    "lmcor_freeze_layers": lambda a: {"freeze_embeddings": True,
                                      "freeze_layers": a.freeze_layers},
    "lmcor_freeze_layers_cached": lambda a: {"freeze_embeddings": True,
                                             "freeze_layers": a.freeze_layers,
                                             "cache_frozen": True},
    "lmcor_combined": lambda a: _lora(a, vocab="task", freeze_layers=a.freeze_layers,
                                      cache_frozen=True),
}


def _lmcor_row(rows, args, recipe: str) -> Dict:
    # Looked up by name in the child process: a lambda cannot be sent to it.
    return lmcor_recipe(rows, args, **RECIPE_OPTIONS[recipe](args))


LMCOR_RECIPES: List[Tuple[str, Callable]] = [
    (name, functools.partial(_lmcor_row, recipe=name)) for name in RECIPE_OPTIONS]


def cpu_info() -> Dict[str, str]:
    fields = {"Model name": "cpu", "L2 cache": "l2", "L3 cache": "l3"}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"cpu": "unknown"}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in fields:
            out[fields[key.strip()]] = value.strip()
    return out


def _run_isolated(fn: Callable, rows, args) -> Dict:
    # A fresh process per row: peak RSS is a per-process maximum, and one row's allocator state
    # would otherwise carry into the next.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(fn, rows, args).result()


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pool", required=True, help="E2E pool folder (source, references, candidates)")
    p.add_argument("--examples", type=int, default=64, help="(record, reference) examples to pack")
    p.add_argument("--batch", type=int, default=4, help="packed rows per step")
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = 2 * rank)")
    p.add_argument("--freeze_layers", type=int, default=9,
                   help="lmcor rows that freeze a bottom stack: its depth")
    p.add_argument("--max_in", type=int, default=320)
    p.add_argument("--max_out", type=int, default=96)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--only", default=None,
                   help="comma-separated row names to run (default: all)")
    args = p.parse_args(argv)
    table = REFERENCE_ROWS + LMCOR_RECIPES
    names = [n for n, _ in table]
    wanted = names if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        p.error(f"--only: unknown row(s) {unknown}; rows are {names}")

    examples = e2e_rows(args.pool, args.examples, args.max_in, args.max_out)
    rows = pack_rows(examples, args.max_in, args.max_out)
    seg = rows["decoder_segment_ids"]
    print(json.dumps({**cpu_info(), "cores": os.cpu_count(), "pool": args.pool,
                      "examples": len(examples), "rows": len(seg),
                      "row_tokens": args.max_in + args.max_out,
                      "fill": round(float((seg > 0).mean()), 3), "batch": args.batch,
                      "steps": args.steps, "warmup": args.warmup, "rank": args.rank}), flush=True)
    for name, fn in table:
        if name in wanted:
            result = _run_isolated(fn, rows, args)
            print(json.dumps({"row": name, **{k: round(v, 3) if isinstance(v, float) else v
                                              for k, v in result.items()}}), flush=True)


if __name__ == "__main__":
    main()
