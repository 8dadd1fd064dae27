"""lmcor's one Orbax restore (lmcor.checkpoints.orbax_io.restore) on checkpoints the trainer's
Checkpointer writes: values, dtypes and shardings, partial reads, and mismatch errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from lmcor.checkpoints import orbax_io
from lmcor.checkpoints.errors import CheckpointMismatchError
from lmcor.models.partitioning import make_mesh, param_shardings
from lmcor.models.t5 import T5Config
from lmcor.training import checkpointing

from _t5_params import random_t5_variables


@pytest.fixture(scope="module")
def boxed_params():
    return random_t5_variables(T5Config.preset("tiny"))["params"]


def _state(params):
    """A tree shaped like the trainer's: a scalar step, params, an optimizer-state list."""
    return {"step": jnp.asarray(7, jnp.int32), "params": params,
            "opt_state": [{"count": jnp.asarray(3, jnp.int32)}, None]}


def _save(directory, state, step=7):
    ckpt = checkpointing.Checkpointer(str(directory), async_save=False)
    assert ckpt.save(step, state, {"step": step}, force=True)
    ckpt.close()
    return orbax_io.item_dir(directory, step)


def _assert_same_values(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_a_trainer_checkpoint_restores_to_its_values_and_dtypes(boxed_params, tmp_path):
    params = nn.unbox(boxed_params)
    norm = params["decoder"]["decoder_norm"]
    norm["scale"] = norm["scale"].astype(jnp.bfloat16)
    state = _state(params)
    path = _save(tmp_path / "ckpt", state)
    assert path == str(tmp_path / "ckpt" / "7" / "state")
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    restored = orbax_io.restore(path, target)
    _assert_same_values(restored, state)
    assert restored["params"]["decoder"]["decoder_norm"]["scale"].dtype == jnp.bfloat16
    # A target without shardings lands on one device, as the corrector's restore wants it.
    wi = restored["params"]["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert wi.sharding == jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def test_a_partial_restore_reads_only_the_targets_leaves(boxed_params, tmp_path):
    params = nn.unbox(boxed_params)
    path = _save(tmp_path / "ckpt", _state(params))
    got = orbax_io.restore(path, {"params": boxed_params}, partial=True)  # boxed targets too
    _assert_same_values(got, {"params": params})
    with pytest.raises(CheckpointMismatchError) as err:  # not partial: all leaves must match
        orbax_io.restore(path, {"params": params})
    assert "unexpected tensor: step" in str(err.value)
    assert "unexpected tensor: opt_state/0/count" in str(err.value)


def test_restore_onto_a_mesh_takes_the_target_shardings_and_dtypes(boxed_params, tmp_path):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    params = nn.unbox(boxed_params)
    path = _save(tmp_path / "ckpt", params)  # written from a single device
    shardings = param_shardings(boxed_params, make_mesh(4, 2))
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16, sharding=s),
                          params, shardings)
    restored = orbax_io.restore(path, target)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
        assert got.sharding == want.sharding and got.dtype == jnp.bfloat16
    wi = restored["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert len(wi.sharding.device_set) == 8 and wi.addressable_shards[0].data.shape == (32, 32)
    _assert_same_values(restored, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))


def test_mismatched_target_lists_every_problem(boxed_params, tmp_path):
    params = nn.unbox(boxed_params)
    path = _save(tmp_path / "ckpt", params)
    target = jax.tree.map(lambda x: x, params)
    del target["encoder"]["encoder_norm"]
    target["decoder"]["extra"] = {"kernel": jnp.zeros((2, 2))}
    target["token_embedder"]["embedding"] = jnp.zeros((7, 32))
    with pytest.raises(CheckpointMismatchError) as err:
        orbax_io.restore(path, target)
    msg = str(err.value)
    assert path in msg.splitlines()[0]
    assert "missing tensor: decoder/extra/kernel" in msg
    assert "unexpected tensor: encoder/encoder_norm/scale" in msg
    assert "token_embedder/embedding: expected (7, 32), found (256, 32)" in msg
    # Partial reads still refuse what the checkpoint lacks or holds in another shape.
    with pytest.raises(CheckpointMismatchError) as err:
        orbax_io.restore(path, target, partial=True)
    msg = str(err.value)
    assert "missing tensor: decoder/extra/kernel" in msg and "unexpected" not in msg
    assert "token_embedder/embedding: expected (7, 32), found (256, 32)" in msg


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        orbax_io.restore(tmp_path / "nothing_here", {"w": jnp.zeros(2)})


def test_the_trainer_resumes_through_the_same_restore(tmp_path):
    state = {"w": jnp.arange(3.0), "step": jnp.asarray(4, jnp.int32)}
    _save(tmp_path / "ckpt", state, step=4)
    out = checkpointing.Checkpointer(str(tmp_path / "ckpt")).restore_latest(
        state, expected_position=lambda step: {"step": step})
    assert out[0] == 4 and out[2] == {"step": 4}
    _assert_same_values(out[1], state)
    # A model whose shapes changed restores no step, and the error says which tensor differs.
    with pytest.raises(checkpointing.UnrestorableCheckpoints,
                       match=r"step 4: .*w: expected \(5,\), found \(3,\)"):
        checkpointing.Checkpointer(str(tmp_path / "ckpt")).restore_latest(
            {"w": jnp.zeros(5), "step": state["step"]})


def test_trainer_checkpointer_saves_under_a_relative_directory(tmp_path, monkeypatch):
    # Users type MODEL_DIR=runs/x; Orbax only accepts absolute paths (and says so in a thread).
    monkeypatch.chdir(tmp_path)
    ckpt = checkpointing.Checkpointer("run/checkpoints", async_save=False)
    assert ckpt.save(1, {"w": jnp.arange(3.0)}, {"step": 1}, force=True)
    ckpt.close()
    assert (tmp_path / "run" / "checkpoints" / "1" / "state").is_dir()
    assert checkpointing.Checkpointer("run/checkpoints").latest_step() == 1
