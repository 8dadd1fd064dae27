"""lmcor.checkpoints.loader: what a checkpoint spec names, a HF folder loaded for decoding, and
the one decode-adapter factory."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
from flax import linen as nn
from flax import traverse_util

from lmcor.checkpoints import loader
from lmcor.checkpoints.bundled import BUNDLED
from lmcor.checkpoints.hf_export import save_gemma_safetensors
from lmcor.data.task_vocab import TaskVocab
from lmcor.models.gemma import Gemma3, GemmaConfig, GemmaLM
from lmcor.models.t5 import T5, T5Config, T5LM


def test_a_spec_names_a_format_and_a_path(tmp_path):
    gguf_file = tmp_path / "m.gguf"
    gguf_file.write_bytes(b"")
    assert loader.gemma_checkpoint(f"gguf:{tmp_path}/x.gguf") == ("gguf", f"{tmp_path}/x.gguf")
    assert loader.gemma_checkpoint(f"safetensors:{tmp_path}") == ("safetensors", str(tmp_path))
    assert loader.gemma_checkpoint(str(gguf_file)) == ("gguf", str(gguf_file))
    assert loader.gemma_checkpoint(str(tmp_path)) == ("safetensors", str(tmp_path))
    for bad in (str(tmp_path / "absent.gguf"), "onnx:/nowhere", "gguf:"):
        with pytest.raises(ValueError) as err:
            loader.gemma_checkpoint(bad, where="JaxBackend.checkpoint")
        assert f"JaxBackend.checkpoint={bad!r}: expected gguf:PATH or safetensors:DIR" in str(
            err.value)


def test_the_bundled_name_is_the_packaged_gguf(gemma_gguf_path):
    assert loader.gemma_checkpoint(BUNDLED) == ("gguf", gemma_gguf_path)
    assert loader.gemma_checkpoint("") == ("gguf", gemma_gguf_path)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, task_spm_path):
    """A tiny random Gemma 3 as a HF folder, with a real SentencePiece model as its tokenizer."""
    config = GemmaConfig.preset("tiny")
    params = nn.unbox(Gemma3(config).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
    out = str(tmp_path_factory.mktemp("hf") / "gemma")
    save_gemma_safetensors(params["params"], config, out)
    shutil.copyfile(task_spm_path, os.path.join(out, "tokenizer.model"))
    return out, params["params"]


def test_a_hf_folder_loads_for_decoding_in_the_asked_dtype(hf_folder, task_spm_path):
    path, saved = hf_folder
    lm, params, tokenizer = loader.load_gemma_lm(path, "bfloat16")
    assert isinstance(lm, GemmaLM) and lm.vocab_map is None
    config = lm.module.config
    assert (jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)) == (jnp.bfloat16,) * 2
    want, got = traverse_util.flatten_dict(saved), traverse_util.flatten_dict(params)
    assert want.keys() == got.keys()
    for key, value in want.items():
        assert got[key].dtype == jnp.bfloat16, key
        np.testing.assert_array_equal(np.asarray(got[key], np.float32),
                                      np.asarray(value.astype(jnp.bfloat16), np.float32))
    text = "Blue Spice is a coffee shop."
    reference = spm.SentencePieceProcessor(model_file=task_spm_path)
    assert list(tokenizer.encode(text, add_bos=False)) == reference.encode(text)
    # The same checkpoint asked for again, by another spelling of its spec, is not read again.
    again = loader.load_gemma_lm(f"safetensors:{path}", "bfloat16")
    assert again[0] is lm and again[1] is params


def test_int8_decoding_quantizes_the_matmul_weights(hf_folder):
    path, _ = hf_folder
    lm, params, _ = loader.load_gemma_lm(path, "float32", "int8")
    assert lm.module.config.quantize == "int8"
    dtypes = {str(x.dtype) for x in jax.tree.leaves(params)}
    assert "int8" in dtypes and "float32" in dtypes  # kernels int8, their scales and norms not


def test_one_factory_makes_every_decode_adapter():
    t5 = T5Config.preset("tiny")
    gemma = GemmaConfig.preset("tiny")
    assert isinstance(loader.decode_adapter(t5), T5LM)
    assert isinstance(loader.decode_adapter(T5(t5)), T5LM)
    assert isinstance(loader.decode_adapter(Gemma3(gemma)), GemmaLM)
    vocab = TaskVocab(range(20), gemma.vocab_size)
    lm = loader.decode_adapter(gemma, vocab)
    assert isinstance(lm, GemmaLM) and lm.vocab_map is vocab
    assert loader.decode_adapter(lm) is lm  # an adapter is used as it is
    with pytest.raises(ValueError, match="task vocabulary"):
        loader.decode_adapter(t5, vocab)
    with pytest.raises(TypeError, match="cannot decode with a dict"):
        loader.decode_adapter({"prefill": None})
