"""`lmcor export MODEL_DIR --out=DIR`: a trained Gemma corrector as a plain HF checkpoint, or
(`--adapter`) as a small released adapter folder.

    lmcor export /runs/e2e_lmcor --out=/exports/e2e_lmcor [--step=N] [--dtype=bfloat16]
    lmcor export /runs/e2e_lmcor --out=data/correctors/e2e --adapter [--max_mb=16]

`--adapter` writes only what the run trained (LoRA adapters), bf16 by default, with the run's
config, task vocabulary and base-weight identity (lmcor.checkpoints.adapter); lmcor loads the
folder wherever it takes a MODEL_DIR (evaluate, serve, export).

Writes the merged, full-vocabulary model in transformers' `Gemma3ForCausalLM` layout
(`model.safetensors` + `config.json`): LoRA adapters are folded into their kernels, frozen
parameters come from the run's base weights, and a task-vocabulary embedding is put back into
the base's full table at its ids. Any stack that reads HF Gemma 3 checkpoints then runs the
corrector; its input text is what `lmcor.data.corrector_input.build_corrector_input` builds,
after BOS, with Gemma 3's own tokenizer.
"""
import argparse
import dataclasses
import os
import sys

import numpy as np

from lmcor import config as gin_config
from lmcor.command_errors import report_error
from lmcor.gin_command import one_line_parser
from lmcor.paths import CHECKPOINTS


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
    from lmcor.corrector import configured_parts, trained_params

    base_model, _, _, _ = configured_parts(model_dir, gin_files, gin_bindings)
    if base_model.kind != "decoder":
        raise ValueError(f"export: {model_dir} holds a {base_model.kind} corrector; only "
                         "Gemma (decoder-only) correctors export to Gemma3ForCausalLM")
    model = base_model.attach(model_dir)
    params = trained_params(model_dir, model, step)
    full, config = full_vocab_params(model, base_model, params)
    return save_gemma_safetensors(full, config, out_dir, dtype=dtype, overwrite=True)


def export_adapter(model_dir: str, out_dir: str, step=None, dtype: str = "bfloat16",
                   max_mb: float = 16.0, gin_files=(), gin_bindings=()) -> str:
    """The run's trained params at `step` (default: best by validation, else latest) as an
    adapter folder; refuses a run that trains the whole model (nothing small to release)."""
    from lmcor.checkpoints import adapter
    from lmcor.corrector import checkpoint_step, configured_parts, restore_params

    base_model, _, _, _ = configured_parts(model_dir, gin_files, gin_bindings)
    if base_model.kind != "decoder" or not base_model.freezing.lora:
        raise ValueError(f"export --adapter: {model_dir} is not a LoRA corrector run "
                         "(gemma_model.lora_rank = 0); export the whole model instead")
    model = base_model.attach(model_dir)
    checkpoints = os.path.join(model_dir, CHECKPOINTS)
    step = checkpoint_step(checkpoints, step)
    params = restore_params(checkpoints, model, step)
    adapter.save_adapter(params, model_dir, out_dir, step, dtype)
    adapter.check_size(out_dir, int(max_mb * 1e6))
    return out_dir


_GIN_HELP = """Gin: the run's MODEL_DIR/config.gin, then each --gin_file, then each binding
  --gin.NAME=VALUE      a binding read last (repeatable): a macro or configurable.parameter of
                        the run's config, e.g. --gin.task_vocabulary.spm_model=PATH for a run
                        whose vocabulary file moved; a string needs no quotes
"""


def main(argv=None) -> int:
    p = one_line_parser(prog="lmcor export", description=__doc__.split("\n\n")[0],
                                   epilog=_GIN_HELP,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("--out", required=True, help="folder to write (replaced if it exists)")
    p.add_argument("--step", type=int, default=None, help="default: best, else latest")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                   help="default: float32, bfloat16 with --adapter")
    p.add_argument("--adapter", action="store_true",
                   help="write the trained adapters only (a released corrector folder)")
    p.add_argument("--max_mb", type=float, default=16.0,
                   help="with --adapter: refuse an adapter file larger than this")
    p.add_argument("--gin_file", action="append", default=[],
                   help="a Gin file read after the run's config.gin (repeatable)")
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:  # the Gin flags' form, files and syntax, checked before the run is loaded
        _, bindings, unknown = gin_config.split_gin_flags(rest)
        for f in args.gin_file:
            gin_config.read_gin_file(gin_config.resolve_gin_file(f))
        for b in bindings:
            gin_config.check_gin_binding(b)
    except (ValueError, FileNotFoundError) as err:
        p.error(str(err))
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        with gin_config.command_line():
            if args.adapter:
                out = export_adapter(args.model_dir, args.out, args.step,
                                     args.dtype or "bfloat16", args.max_mb, args.gin_file,
                                     bindings)
            else:
                out = export(args.model_dir, args.out, args.step, args.dtype or "float32",
                             args.gin_file, bindings)
    except (ValueError, FileNotFoundError) as err:
        return report_error("lmcor export", err)
    print(f"lmcor export: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
