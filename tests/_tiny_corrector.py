"""A tiny T5 corrector for mechanics tests (serving, batching, loading): random weights over a
small SentencePiece vocabulary trained on real task text. Its outputs mean nothing; the tests
only check that the served text is what this corrector decodes."""
import functools

import jax
import jax.numpy as jnp
import sentencepiece as spm

from lmcor.inference.corrector import Corrector
from lmcor.inference.settings import CorrectorSettings
from lmcor.data.corrector_input import CorrectorOptions
from lmcor.models.t5 import T5, T5Config

SETTINGS = CorrectorSettings(beam_size=2, max_decode_tokens=6, max_input_tokens=384,
                             length_bucket=64)


def tiny_config(spm_path: str, **overrides) -> T5Config:
    vocab = spm.SentencePieceProcessor(model_file=spm_path).get_piece_size()
    return T5Config.preset("tiny", vocab_size=vocab, **overrides)


def tiny_params(config: T5Config, seed: int = 0):
    tokens = jnp.ones((1, 8), jnp.int32)
    return T5(config).init({"params": jax.random.key(seed)}, tokens, tokens)["params"]


def tiny_corrector(spm_path: str, options: CorrectorOptions = CorrectorOptions(),
                   settings: CorrectorSettings = SETTINGS) -> Corrector:
    import seqio

    config = tiny_config(spm_path)
    return Corrector(config, tiny_params(config), seqio.SentencePieceVocabulary(spm_path),
                     options, settings)


@functools.lru_cache(maxsize=None)
def shared_corrector(spm_path: str) -> Corrector:
    """One corrector per session, so every test reuses its compiled decode loops."""
    return tiny_corrector(spm_path)


def write_model_dir(model_dir, spm_path: str, params, extra_gin: str = "", step: int = 5,
                    **overrides) -> dict:
    """A MODEL_DIR as the trainer leaves it: a checkpoint saved by its own Checkpointer (params +
    optimizer state + data position) and the run's config.gin. Returns the saved params. Into
    an existing MODEL_DIR it adds the checkpoint `step`, as a run that trained on would.
    `overrides`: T5Config fields of the tiny preset to change (params of that shape)."""
    from lmcor.models import partitioning
    from lmcor.training import builders, checkpointing, state as state_lib

    config = tiny_config(spm_path)
    model = builders.t5_model(preset="tiny", vocab_size=config.vocab_size, **overrides)
    optimizer = state_lib.make_optimizer(state_lib.make_schedule())
    state, _ = state_lib.create_state(model.init_fn, optimizer, partitioning.make_mesh(1, 1),
                                      seed=3, init_params=params)
    ckpt = checkpointing.Checkpointer(f"{model_dir}/checkpoints", async_save=False)
    ckpt.save(step, state, {"step": step}, force=True)
    ckpt.close()
    with open(f"{model_dir}/config.gin", "w", encoding="utf-8") as f:
        f.write("train.model = @t5_model()\n"
                "t5_model.preset = 'tiny'\n"
                f"t5_model.vocab_size = {config.vocab_size}\n"
                + "".join(f"t5_model.{k} = {v!r}\n" for k, v in overrides.items()) +
                f"task_vocabulary.spm_model = '{spm_path}'\n"
                "corrector_settings.beam_size = 2\n"
                "corrector_settings.max_decode_tokens = 6\n"
                "corrector_settings.length_bucket = 64\n" + extra_gin)
    return jax.device_get(state.params)
