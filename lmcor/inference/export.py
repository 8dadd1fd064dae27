"""`lmcor export MODEL_DIR --out=DIR`: a trained Gemma corrector as a plain HF checkpoint, or
(`--adapter`) as a small released adapter folder.

    lmcor export /runs/e2e_lmcor --out=/exports/e2e_lmcor [--step=N] [--dtype=bfloat16]
    lmcor export /runs/e2e_lmcor --out=data/correctors/e2e --adapter [--max_mb=16]

`--adapter` writes only what the run trained (LoRA adapters), bf16 by default, with the run's
config, task vocabulary and base-weight identity (lmcor.checkpoints.released_adapter); lmcor
loads the folder wherever it takes a MODEL_DIR (evaluate, serve, export). The command's flags
are lmcor.cli.export_command's.

Writes the merged, full-vocabulary model in transformers' `Gemma3ForCausalLM` layout
(`model.safetensors` + `config.json`): LoRA adapters are folded into their kernels, frozen
parameters come from the run's base weights, and a task-vocabulary embedding is put back into
the base's full table at its ids. Any stack that reads HF Gemma 3 checkpoints then runs the
corrector; its input text is what `lmcor.data.corrector_input.build_corrector_input` builds,
after BOS, with Gemma 3's own tokenizer.
"""
import dataclasses
import os

import numpy as np

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
           gin_bindings=(), overrides=None) -> str:
    """The run's trained params at `step` (default: best by validation, else latest) as a
    merged, full-vocabulary HF Gemma 3 folder. `gin_bindings` and `overrides` are
    lmcor.inference.run_dir.parse_run_config's."""
    from lmcor.checkpoints.hf_export import save_gemma_safetensors
    from lmcor.inference.run_dir import configured_parts, trained_params

    base_model, _, _, _ = configured_parts(model_dir, gin_bindings, overrides)
    if base_model.kind != "decoder":
        raise ValueError(f"export: {model_dir} holds a {base_model.kind} corrector; only "
                         "Gemma (decoder-only) correctors export to Gemma3ForCausalLM")
    model = base_model.attach(model_dir)
    params = trained_params(model_dir, model, step)
    full, config = full_vocab_params(model, base_model, params)
    return save_gemma_safetensors(full, config, out_dir, dtype=dtype, overwrite=True)


def export_adapter(model_dir: str, out_dir: str, step=None, dtype: str = "bfloat16",
                   max_mb: float = 16.0, gin_bindings=(), overrides=None) -> str:
    """The run's trained params at `step` (default: best by validation, else latest) as an
    adapter folder; refuses a run that trains the whole model (nothing small to release)."""
    from lmcor.checkpoints import released_adapter
    from lmcor.checkpoints.trained_run import checkpoint_step
    from lmcor.inference.run_dir import configured_parts, trained_params

    base_model, _, _, _ = configured_parts(model_dir, gin_bindings, overrides)
    if base_model.kind != "decoder" or not base_model.freezing.lora:
        raise ValueError(f"export --adapter: {model_dir} is not a LoRA corrector run "
                         "(gemma_model.lora_rank = 0); export the whole model instead")
    model = base_model.attach(model_dir)
    step = checkpoint_step(os.path.join(model_dir, CHECKPOINTS), step)
    params = trained_params(model_dir, model, step)
    released_adapter.save_adapter(params, model_dir, out_dir, step, dtype)
    released_adapter.check_size(out_dir, int(max_mb * 1e6))
    return out_dir

