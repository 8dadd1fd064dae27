"""A tiny T5 corrector for mechanics tests (serving, batching, loading): random weights over a
small SentencePiece vocabulary trained on real task text. Its outputs mean nothing; the tests
only check that the served text is what this corrector decodes."""
import functools

import jax
import jax.numpy as jnp
import sentencepiece as spm

from lmcor.corrector import Corrector, CorrectorSettings
from lmcor.data.preprocessors import CorrectorOptions
from lmcor.models.t5 import T5, T5Config

SETTINGS = CorrectorSettings(beam_size=2, max_decode_tokens=6, max_input_tokens=384,
                             length_bucket=64)


def tiny_config(spm_path: str) -> T5Config:
    vocab = spm.SentencePieceProcessor(model_file=spm_path).get_piece_size()
    return T5Config.preset("tiny", vocab_size=vocab)


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
