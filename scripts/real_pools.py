"""Sample the README's real pools (E2E test + dev, JFLEG test + dev, two prompt variants each) in
one process, so Gemma 3 270M is loaded and each decode shape compiled once for all of them.

    .venv/bin/python scripts/real_pools.py --root pools [--only e2e_test_e2e_attributes ...]
    # on a CPU: --dtype bfloat16 --shared_prefill

Each pool is exactly what `lmcor sample` writes for the same settings (docs/sampling.md): the
same `sample_pool` call, shards, manifest and resume rules, so a killed run is continued by
running the same command again. The backend options are the job's, exposed as flags because the
right batch size depends on the accelerator: on a GPU, `--batch_size 64 --bucket 64` keeps it
busy; on a 2-core CPU the defaults below are the faster choice.
"""
import argparse
import json
import os
import sys
import time

# (task, split to sample, split the demonstrations come from, prompt variant), in the order a
# partial run is most useful: the first variant of every pool before the second.
POOLS = [(task, split, "dev", variant)
         for task_variants in [(("e2e", "e2e_attributes"), ("jfleg", "jfleg_corrected")),
                               (("e2e", "e2e_mr"), ("jfleg", "jfleg_fluent"))]
         for task, variant in task_variants
         for split in ("test", "dev")]


def pool_name(task: str, split: str, variant: str) -> str:
    return f"{task}_{split}_{variant}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="parent folder of the pool folders")
    p.add_argument("--only", nargs="*", default=None, help="pool names to sample (default: all)")
    p.add_argument("--checkpoint", default="gemma3-270m", help="as JaxBackend.checkpoint")
    p.add_argument("--data_dir", default=None, help="default: ../shared/data beside the repo")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch_size", type=int, default=8, help="inputs per decode call")
    p.add_argument("--bucket", type=int, default=32, help="prompt length rounding (tokens)")
    p.add_argument("--shared_prefill", action="store_true",
                   help="greedy and samples from one prefill (JaxBackend.shared_prefill; the "
                        "fastest CPU path with --dtype bfloat16)")
    p.add_argument("--shard_size", type=int, default=8)
    p.add_argument("--max_examples", type=int, default=None)
    args = p.parse_args(argv)

    from lmcor.sampling.backends.base import SamplingParams  # noqa: PLC0415 — `--help` stays instant
    from lmcor.sampling.backends.jax_lm import JaxBackend  # noqa: PLC0415
    from lmcor.sampling.prompts import PromptConfig  # noqa: PLC0415
    from lmcor.sampling.job import sample_pool  # noqa: PLC0415

    known = {pool_name(t, s, v) for t, s, _, v in POOLS}
    unknown = sorted(set(args.only or ()) - known)
    if unknown:
        p.error(f"unknown pool(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    backend = JaxBackend(checkpoint=args.checkpoint, dtype=args.dtype, batch_size=args.batch_size,
                         bucket=args.bucket, per_example_seed=False,
                         shared_prefill=args.shared_prefill)
    for task, split, demo_split, variant in POOLS:
        name = pool_name(task, split, variant)
        if args.only and name not in args.only:
            continue
        start = time.time()
        backend.reset_stats()
        summary = sample_pool(
            output_dir=os.path.join(args.root, name), task=task, split=split,
            demo_split=demo_split, backend=backend, prompt=PromptConfig(variant=variant),
            sampling=SamplingParams(), data_dir=args.data_dir, shard_size=args.shard_size,
            batch_size=args.batch_size, max_examples=args.max_examples)
        print(json.dumps({"pool": name, "status": summary["status"],
                          "examples": summary["counts"]["examples"],
                          "wall_s": round(time.time() - start, 1),
                          "tokens_per_s": summary["tokens_per_s_this_run"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
