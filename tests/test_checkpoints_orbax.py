"""Orbax save/restore of lmcor param trees: values, dtypes, shardings, and mismatch errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from lmcor.checkpoints.errors import CheckpointMismatchError
from lmcor.checkpoints.orbax_io import restore_params, save_params
from lmcor.models.partitioning import make_mesh, param_shardings
from lmcor.models.t5 import T5Config

from _t5_params import random_t5_variables


@pytest.fixture(scope="module")
def boxed_params():
    return random_t5_variables(T5Config.preset("tiny"))["params"]


def _assert_same_values(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_round_trip_without_target(boxed_params, tmp_path):
    params = nn.unbox(boxed_params)
    norm = params["decoder"]["decoder_norm"]
    norm["scale"] = norm["scale"].astype(jnp.bfloat16)
    save_params(tmp_path / "ckpt", params)
    restored = restore_params(tmp_path / "ckpt")
    assert jax.tree.structure(restored) == jax.tree.structure(params)
    _assert_same_values(restored, params)
    assert restored["decoder"]["decoder_norm"]["scale"].dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="already exists"):  # never silently replace a checkpoint
        save_params(tmp_path / "ckpt", params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    save_params(tmp_path / "ckpt", zeros, overwrite=True)
    _assert_same_values(restore_params(tmp_path / "ckpt"), zeros)


def test_restore_onto_a_mesh_takes_the_target_shardings_and_dtypes(boxed_params, tmp_path):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    params = nn.unbox(boxed_params)
    save_params(tmp_path / "ckpt", params)  # written from a single device
    shardings = param_shardings(boxed_params, make_mesh(4, 2))
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16, sharding=s),
                          params, shardings)
    restored = restore_params(tmp_path / "ckpt", target)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
        assert got.sharding == want.sharding and got.dtype == jnp.bfloat16
    wi = restored["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert len(wi.sharding.device_set) == 8 and wi.addressable_shards[0].data.shape == (32, 32)
    _assert_same_values(restored, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))


def test_mismatched_target_lists_every_problem(boxed_params, tmp_path):
    params = nn.unbox(boxed_params)
    save_params(tmp_path / "ckpt", params)
    target = jax.tree.map(lambda x: x, params)
    del target["encoder"]["encoder_norm"]
    target["decoder"]["extra"] = {"kernel": jnp.zeros((2, 2))}
    target["token_embedder"]["embedding"] = jnp.zeros((7, 32))
    with pytest.raises(CheckpointMismatchError) as err:
        restore_params(tmp_path / "ckpt", target)
    msg = str(err.value)
    assert "missing tensor: decoder/extra/kernel" in msg
    assert "unexpected tensor: encoder/encoder_norm/scale" in msg
    assert "token_embedder/embedding: expected (7, 32), found (256, 32)" in msg


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        restore_params(tmp_path / "nothing_here")


def test_trainer_checkpointer_saves_under_a_relative_directory(tmp_path, monkeypatch):
    # Users type MODEL_DIR=runs/x; Orbax only accepts absolute paths (and says so in a thread).
    import jax.numpy as jnp

    from lmcor.training import checkpointing

    monkeypatch.chdir(tmp_path)
    ckpt = checkpointing.Checkpointer("run/checkpoints", async_save=False)
    assert ckpt.save(1, {"w": jnp.arange(3.0)}, {"step": 1}, force=True)
    ckpt.close()
    assert (tmp_path / "run" / "checkpoints" / "1" / "state").is_dir()
    assert checkpointing.Checkpointer("run/checkpoints").latest_step() == 1
