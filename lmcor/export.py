"""`lmcor export MODEL_DIR --out=DIR`: a trained Gemma corrector as a plain HF checkpoint.

    lmcor export /runs/e2e_lmcor --out=/exports/e2e_lmcor [--step=N] [--dtype=bfloat16]

Writes the merged, full-vocabulary model in transformers' `Gemma3ForCausalLM` layout
(`model.safetensors` + `config.json`): LoRA adapters are folded into their kernels, frozen
parameters come from the run's base weights, and a task-vocabulary embedding is put back into
the base's full table at its ids. Any stack that reads HF Gemma 3 checkpoints then runs the
corrector; its input text is what `lmcor.data.preprocessors.build_corrector_input` builds,
after BOS, with Gemma 3's own tokenizer.
"""
import argparse
import dataclasses
import os
import sys

import numpy as np


def full_vocab_params(model, base_model, params) -> tuple:
    """(params, config) of the whole-vocabulary model, adapters merged."""
    merged = model.decode_params(params)
    config = dataclasses.replace(model.config, lora_rank=0)
    if model.task_vocab is None:
        return merged, config
    if base_model.pretrained_params is None:
        raise ValueError("export: a task-vocabulary corrector needs its base weights to "
                         "restore the full embedding (gemma_model.gguf / .safetensors)")
    table = np.array(base_model.pretrained_params["embedder"]["embedding"], np.float32)
    table[model.task_vocab.ids] = np.asarray(merged["embedder"]["embedding"], np.float32)
    merged = dict(merged, embedder=dict(merged["embedder"], embedding=table))
    return merged, dataclasses.replace(config, vocab_size=table.shape[0])


def export(model_dir: str, out_dir: str, step=None, dtype: str = "float32",
           gin_files=(), gin_bindings=()) -> str:
    from lmcor.checkpoints.hf_export import save_gemma_safetensors
    from lmcor.corrector import configured_parts, restore_params

    base_model, _, _, _ = configured_parts(model_dir, gin_files, gin_bindings)
    if base_model.kind != "decoder":
        raise ValueError(f"export: {model_dir} holds a {base_model.kind} corrector; only "
                         "Gemma (decoder-only) correctors export to Gemma3ForCausalLM")
    model = base_model.attach(model_dir)
    params = restore_params(os.path.join(model_dir, "checkpoints"), model, step)
    full, config = full_vocab_params(model, base_model, params)
    return save_gemma_safetensors(full, config, out_dir, dtype=dtype, overwrite=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="lmcor export", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir")
    p.add_argument("--out", required=True, help="folder to write (replaced if it exists)")
    p.add_argument("--step", type=int, default=None, help="default: best, else latest")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--gin_file", action="append", default=[])
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    bindings = [r[len("--gin."):] for r in rest if r.startswith("--gin.")]
    unknown = [r for r in rest if not r.startswith("--gin.")]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        out = export(args.model_dir, args.out, args.step, args.dtype, args.gin_file, bindings)
    except (ValueError, FileNotFoundError) as err:
        print(f"lmcor export: {err}", file=sys.stderr)
        return 2
    print(f"lmcor export: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
