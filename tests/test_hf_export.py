"""Gemma 3 export to a HF folder: transformers loads it and agrees on the logits, and our own
loader reads back the same config and params."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from lmcor.checkpoints.errors import CheckpointMismatchError
from lmcor.checkpoints.hf_export import save_gemma_safetensors
from lmcor.checkpoints.hf_gemma import load_gemma_safetensors
from lmcor.models.gemma import Gemma3, GemmaConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_gemma import _hf_logits, _padded_batch  # noqa: E402 — imports torch: after the skip

CONFIGS = {
    "tiny": GemmaConfig.preset("tiny"),
    # Non-default values for every config.json field that changes the logits: linear RoPE
    # scaling, a query scalar other than head_dim, a softcap small enough to bite, other bases.
    "tweaked": GemmaConfig.preset("tiny", rope_global_scaling=4.0, query_pre_attn_scalar=24.0,
                                  final_logit_softcap=3.0, rope_local_base=5e3,
                                  rope_global_base=5e5, eos_id=106, max_position_embeddings=64),
}


def _random_variables(config, seed=0):
    """Boxed init output (as trainers hold it) with nonzero norms, so (1 + w) is tested."""
    model = Gemma3(config)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))
    rng = np.random.default_rng(seed)

    def perturb(path, leaf):
        if any("norm" in str(getattr(k, "key", k)) for k in path):
            return leaf.replace_boxed(jnp.asarray(rng.normal(0.0, 0.5, leaf.value.shape),
                                                  leaf.value.dtype))
        return leaf

    return jax.tree_util.tree_map_with_path(perturb, variables,
                                            is_leaf=lambda x: isinstance(x, nn.Partitioned))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_transformers_loads_export_with_same_logits(name, tmp_path):
    config = CONFIGS[name]
    variables = _random_variables(config)
    out = save_gemma_safetensors(variables, config, tmp_path / "hf")
    model = transformers.Gemma3ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids, mask, positions = _padded_batch(np.random.default_rng(1), config.vocab_size, 12,
                                         [12, 9, 5], left=False)
    want = _hf_logits(model, ids, mask, positions)
    got = Gemma3(config).apply(nn.unbox(variables), jnp.asarray(ids, jnp.int32),
                               positions=jnp.asarray(positions), segment_ids=jnp.asarray(mask))
    valid = mask.astype(bool)
    err = np.abs(np.asarray(got)[valid] - want[valid]).max()
    assert err <= 1e-4, err
    assert np.abs(want[valid]).max() > 0.1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_own_loader_reads_back_config_and_params(name, dtype, tmp_path):
    config = CONFIGS[name]
    params = nn.unbox(_random_variables(config))["params"]  # the bare tree, as loaders return
    out = save_gemma_safetensors(params, config, tmp_path / "hf", dtype=dtype)
    loaded_config, loaded = load_gemma_safetensors(out)
    layer_types = tuple(config.layer_type(i) for i in range(config.num_layers))
    assert loaded_config == dataclasses.replace(config, layer_types=layer_types)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == dtype
    want, got = traverse_util.flatten_dict(params), traverse_util.flatten_dict(loaded)
    assert want.keys() == got.keys()
    for key, value in want.items():
        np.testing.assert_array_equal(np.asarray(got[key]),
                                      np.asarray(value.astype(dtype), np.float32), err_msg=key)


def test_folder_is_replaced_whole_and_bad_params_are_named(tmp_path):
    config = CONFIGS["tiny"]
    params = nn.unbox(_random_variables(config))["params"]
    tok = tmp_path / "tokenizer.model"
    tok.write_bytes(b"spm bytes")
    out = tmp_path / "hf"
    save_gemma_safetensors(params, config, out, tokenizer_files=[str(tok)])
    (out / "stale.txt").write_text("from an older export")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_gemma_safetensors(params, config, out)
    save_gemma_safetensors(params, config, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "tokenizer.model"]  # no temps left

    del params["layers_2"]["mlp"]["wi_1"]
    params["layers_0"]["attn"]["q"]["kernel"] = params["layers_0"]["attn"]["q"]["kernel"][:, :3]
    with pytest.raises(CheckpointMismatchError) as err:
        save_gemma_safetensors(params, config, tmp_path / "bad")
    assert "missing tensor: layers_2/mlp/wi_1/kernel" in str(err.value)
    assert ("mis-shaped tensor: layers_0/attn/q/kernel as model.layers.0.self_attn.q_proj.weight: "
            "expected (64, 64), found (48, 64)") in str(err.value)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="query_pre_attn_scalar=24.5 is not a whole number"):
        save_gemma_safetensors(params, dataclasses.replace(config, query_pre_attn_scalar=24.5),
                               tmp_path / "bad")
