"""bf16 vs f32 matmul speed in XLA:CPU, under the XLA CPU options this jaxlib has, vs torch.

    .venv/bin/python benchmarks/matmul_dtypes.py [--repeats=3] [--configs=default,eigen]
                                                 [--shapes=1024x1024x1024] [--no_torch]

Per shape (M x K x N) three variants: f32 x f32 -> f32; bf16 x bf16 -> f32 (`lax.dot_general`
with `preferred_element_type=float32`, the mixed-precision training case); bf16 -> bf16.
Each XLA configuration runs in a fresh process with its own XLA_FLAGS, since XLA reads them once
when the backend starts; torch (2 threads) runs in a process of its own too. Timings are the
median of `--repeats` calls after one warm-up, compile excluded. Prints the CPU, the
`xla_cpu_*` options found in jaxlib, one JSON line per (config, shape, dtype) with what XLA
lowered the dot to, then a GFLOP/s table with bf16/f32 speed ratios (< 1: bf16 is slower).
"""
import argparse
import glob
import json
import mmap
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

SHAPES = [(2048, 640, 2048), (1024, 1024, 1024), (4096, 4096, 4096),
          # Gemma 3 270M training step: [B*L, d_model] x [d_model, d_ff] and back.
          (1664, 640, 2048), (1664, 2048, 640)]
DTYPES = ["f32", "bf16>f32", "bf16"]
_NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="
# Timed by default: each of these changes which kernel runs the dot, or the code around it.
CONFIGS = {
    "default": "",
    # An empty YNN list sends dots to XLA's own DotThunk, which calls Eigen.
    "eigen": _NO_YNN,
    # The default list fuses a lone dot as `individual_dot` (`-individual_dot` turns it off, `-dot`
    # does nothing); naming `dot` instead fuses the bf16->f32 converts in with it.
    "ynn_dot": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "onednn": f"{_NO_YNN} --xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
    "fastmath_v512": "--xla_cpu_enable_fast_math=true --xla_cpu_prefer_vector_width=512",
}
# Only probed (lowering printed, not timed unless named in --configs): on a lone dot they either
# leave the lowering unchanged or only touch LLVM-emitted code that the library kernels bypass.
PROBE_ONLY = {
    "xnn_dot": f"{_NO_YNN} --xla_cpu_experimental_xnn_fusion_type=dot",
    "xnn_greedy": f"{_NO_YNN} --xla_cpu_experimental_xnn_graph_fusion_mode="
                  "XNN_GRAPH_FUSION_MODE_GREEDY",
    "onednn_custom_call": f"{_NO_YNN} --xla_cpu_use_onednn=true "
                          "--xla_cpu_experimental_onednn_custom_call=true",
    "eigen_fastmath": f"{_NO_YNN} --xla_cpu_enable_fast_math=true --xla_cpu_prefer_vector_width=512",
    "concurrency_sched": "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    "strict_dot_math": "--xla_cpu_strict_dot_conv_math=true",
    "max_isa_avx2": "--xla_cpu_max_isa=AVX2",
}


def _flops(shape):
    m, k, n = shape
    return 2.0 * m * k * n


def _median_s(fn, repeats):
    fn()  # warm-up: first-call allocations and thread-pool start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _inputs(shape, seed=0):
    import numpy as np
    m, k, n = shape
    rng = np.random.default_rng(seed)
    # Random values: zeros or ones would hide any data-dependent cost (denormals, NaN checks).
    return rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)


# ---- what XLA turned the dot into ----------------------------------------------------------

def lowering(hlo_text):
    """'<kernel> <lhs dtype>x<rhs dtype>-><out dtype>' for the module's one dot."""
    kinds = set(re.findall(r'"kind":"__(\w+?)_fusion"', hlo_text))
    kinds |= {t.split("$")[0].strip("_") for t in re.findall(r'custom_call_target="([^"]+)"', hlo_text)}
    for block in hlo_text.split("\n\n"):
        dot = re.search(r"%\S+ = (\w+)\[[^\]]*\]\S* dot\(%([\w.]+), %([\w.]+)\)", block)
        if not dot:
            continue
        types = []
        for name in dot.group(2, 3):
            found = re.search(rf"%{re.escape(name)} = (\w+)\[", block)
            types.append(found.group(1) if found else "?")
        # With no library fusion, XLA's DotThunk runs the dot through Eigen.
        kernel = "+".join(sorted(kinds)) or "eigen"
        return f"{kernel} {types[0]}x{types[1]}->{dot.group(1)}"
    return "no dot?"


def _dot_fn(variant):
    import jax
    import jax.numpy as jnp
    from jax import lax
    out = jnp.float32 if variant == "bf16>f32" else None
    dims = (((1,), (0,)), ((), ()))
    return jax.jit(lambda a, b: lax.dot_general(a, b, dims, preferred_element_type=out))


def _device_inputs(shape, variant):
    import jax
    import jax.numpy as jnp
    dtype = jnp.float32 if variant == "f32" else jnp.bfloat16
    return [jax.device_put(x.astype(dtype)) for x in _inputs(shape)]


def worker_jax(config, shapes, repeats):
    import jax
    for shape in shapes:
        for variant in DTYPES:
            a, b = _device_inputs(shape, variant)
            compiled = _dot_fn(variant).lower(a, b).compile()
            seconds = _median_s(lambda: compiled(a, b).block_until_ready(), repeats)
            print(json.dumps(dict(
                config=config, xla_flags=os.environ.get("XLA_FLAGS", ""), shape=list(shape),
                dtype=variant, lowering=lowering(compiled.as_text()), ms=round(seconds * 1e3, 2),
                gflops=round(_flops(shape) / seconds / 1e9, 1), repeats=repeats,
                jax=jax.__version__)), flush=True)


def worker_torch(shapes, repeats):
    import torch
    torch.set_num_threads(2)
    for shape in shapes:
        a32, b32 = (torch.from_numpy(x) for x in _inputs(shape))
        for variant, (a, b) in (("f32", (a32, b32)),
                                ("bf16", (a32.bfloat16(), b32.bfloat16()))):
            with torch.no_grad():
                seconds = _median_s(lambda: torch.matmul(a, b), repeats)
            print(json.dumps(dict(
                config="torch", shape=list(shape), dtype=variant,
                lowering=f"torch {torch.backends.cpu.get_cpu_capability()}",
                ms=round(seconds * 1e3, 2), gflops=round(_flops(shape) / seconds / 1e9, 1),
                repeats=repeats, torch=torch.__version__)), flush=True)


def worker_probe(config):
    """Lowering only, of small dots: for configs not worth timing."""
    lowerings = []
    for variant in DTYPES:
        a, b = _device_inputs((256, 256, 256), variant)
        lowerings.append(f"{variant}: {lowering(_dot_fn(variant).lower(a, b).compile().as_text())}")
    print(json.dumps(dict(probe=config, xla_flags=os.environ.get("XLA_FLAGS", ""),
                          lowerings=lowerings)), flush=True)


def worker_flags():
    """`xla_cpu_*` names in jaxlib's binaries that XLA accepts as per-compile options."""
    import jax
    import jaxlib
    names = set()
    for path in glob.glob(os.path.join(os.path.dirname(jaxlib.__file__), "*.so")):
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            names |= {m.decode() for m in re.findall(rb"xla_cpu_[a-z0-9_]+", data)}
    lowered = jax.jit(lambda x: x + 1).lower(jax.numpy.ones(4))
    accepted = []
    for name in sorted(names):
        try:
            lowered.compile(compiler_options={name: "0"})
        except Exception as e:
            # Only an unknown name is a "no"; a value of the wrong kind still proves it exists.
            if "No such compile option" in str(e):
                continue
        accepted.append(name)
    print(json.dumps(dict(flags_scanned=len(names), flags_accepted=accepted)), flush=True)


# ---- driver ----------------------------------------------------------------------------------

def cpu_line():
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(re.findall(r"^([^:]+):\s+(.*)$", out, re.M))
    isa = set(fields.get("Flags", "").split())
    wanted = ["avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"]
    have = " ".join(f"{f}{'+' if f in isa else '-'}" for f in wanted)
    return (f"CPU: {fields.get('Model name', '?')} (family {fields.get('CPU family', '?')} "
            f"model {fields.get('Model', '?')}), {fields.get('CPU(s)', '?')} CPUs, "
            f"L2 {fields.get('L2 cache', '?')}, L3 {fields.get('L3 cache', '?')}, "
            f"hypervisor {fields.get('Hypervisor vendor', 'none')}; ISA as the OS sees it: {have}")


def _run_child(args, env_flags, timeout, echo=True):
    env = dict(os.environ, XLA_FLAGS=env_flags, PYTHONUNBUFFERED="1")
    # stderr to a file: XLA's logging could fill a pipe that nobody reads while we read stdout.
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)] + args, env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        rows = []
        for line in proc.stdout:
            if line.startswith("{"):
                if echo:
                    print(line, end="", flush=True)
                rows.append(json.loads(line))
        proc.wait()
        killer.cancel()
        if proc.returncode:
            err.seek(0)
            tail = err.read().strip().splitlines()[-3:]
            print(f"# {' '.join(args)} failed (rc {proc.returncode}): {' | '.join(tail)}",
                  flush=True)
    return rows


def summary(rows, configs):
    by = {(r["config"], tuple(r["shape"]), r["dtype"]): r for r in rows}
    shapes = list(dict.fromkeys(tuple(r["shape"]) for r in rows))
    cols = list(configs) + (["torch"] if any(r["config"] == "torch" for r in rows) else [])
    width = max(9, *(len(c) + 1 for c in cols))
    print("\nGFLOP/s (higher is better); 'bf16>f32' = bf16 inputs, f32 output; "
          "ratio = GFLOP/s of the bf16 row / f32 row")
    print(f"{'M x K x N':<16}{'dtype':<16}" + "".join(f"{c:>{width}}" for c in cols))
    for shape in shapes:
        label = "x".join(map(str, shape))
        for variant in DTYPES + ["ratio bf16>f32", "ratio bf16"]:
            cells = []
            for c in cols:
                if variant.startswith("ratio"):
                    num, den = by.get((c, shape, variant[6:])), by.get((c, shape, "f32"))
                    cells.append(f"{num['gflops'] / den['gflops']:.2f}" if num and den else "-")
                else:
                    r = by.get((c, shape, variant))
                    cells.append(f"{r['gflops']:.0f}" if r else "-")
            print(f"{label:<16}{variant:<16}" + "".join(f"{x:>{width}}" for x in cells))
            label = ""
    print("\nwhat each config ran (from the optimized HLO):")
    for c in cols:
        kinds = {r["dtype"]: r["lowering"] for r in rows if r["config"] == c}
        print(f"  {c:<14} " + "; ".join(f"{d}: {kinds[d]}" for d in DTYPES if d in kinds))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma list from: {', '.join(list(CONFIGS) + list(PROBE_ONLY))}")
    parser.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES))
    parser.add_argument("--no_torch", action="store_true")
    parser.add_argument("--no_probe", action="store_true", help="skip flag discovery and probe")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per child process")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",")]
    every = {**CONFIGS, **PROBE_ONLY}

    if args.worker == "torch":
        return worker_torch(shapes, args.repeats)
    if args.worker == "flags":
        return worker_flags()
    if args.worker and args.worker.startswith("probe:"):
        return worker_probe(args.worker[len("probe:"):])
    if args.worker:
        return worker_jax(args.worker, shapes, args.repeats)

    start = time.perf_counter()
    print(cpu_line())
    if os.environ.get("XLA_FLAGS"):
        print(f"# ignoring the inherited XLA_FLAGS={os.environ['XLA_FLAGS']!r}")
    configs = {name: every[name] for name in args.configs.split(",")}
    if not args.no_probe:
        found = _run_child(["--worker", "flags"], "", args.timeout, echo=False)
        if found:
            print(f"xla_cpu_* options accepted by this jaxlib ({len(found[0]['flags_accepted'])} "
                  f"of {found[0]['flags_scanned']} names in its .so files): "
                  + " ".join(found[0]["flags_accepted"]), flush=True)
        for name, flags in every.items():
            if name not in configs:
                _run_child(["--worker", f"probe:{name}"], flags, args.timeout)
    rows = []
    for name, flags in configs.items():
        rows += _run_child(["--worker", name, "--repeats", str(args.repeats),
                            "--shapes", args.shapes], flags, args.timeout)
    if not args.no_torch:
        rows += _run_child(["--worker", "torch", "--repeats", str(args.repeats),
                            "--shapes", args.shapes], "", args.timeout)
    summary(rows, configs)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
