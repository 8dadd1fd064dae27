"""Corrector inference: same input as the SeqIO training task, batch-padding invariance,
input limits, and loading a MODEL_DIR written by the trainer's own checkpointer."""
import itertools

import gin
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from lmcor.corrector import Corrector, InputTooLongError, pool_record, row_bucket
from lmcor.data import preprocessors as pp
from lmcor.data.importers import import_wmt

from _tiny_corrector import SETTINGS, tiny_config, tiny_corrector, tiny_params


@pytest.fixture(scope="module")
def wmt_records(data_dir):
    return list(itertools.islice(import_wmt(data_dir, "wmt22"), 3))


def _task_inputs(records, opts, vocab):
    """What the SeqIO training task feeds the model: corrector_example, then tokenize + EOS."""
    ds = tf.data.Dataset.from_generator(lambda: (pp.record_features(r) for r in records),
                                        output_signature=pp.RAW_SIGNATURE)
    features = {"inputs": seqio.Feature(vocab, add_eos=True),
                "targets": seqio.Feature(vocab, add_eos=True)}
    with gin.config_scope(None):
        gin.bind_parameter("corrector_options.k", opts.k)
        gin.bind_parameter("corrector_options.max_input_tokens", opts.max_input_tokens)
        try:
            ds = pp.corrector_example(ds, features)
            ds = seqio.preprocessors.tokenize(ds, features)
            ds = seqio.preprocessors.append_eos(ds, features)
            return [list(ex["inputs"]) for ex in ds.as_numpy_iterator()]
        finally:
            gin.clear_config()


def test_input_ids_equal_the_training_task(task_spm_path, wmt_records):
    opts = pp.CorrectorOptions(k=3, max_input_tokens=120)
    corrector = tiny_corrector(task_spm_path, options=opts)
    want = _task_inputs(wmt_records, opts, corrector.vocab)
    got = [corrector.prepare(r) for r in wmt_records]
    assert got == [[int(t) for t in w] for w in want]
    assert all(len(g) <= 120 + 1 for g in got)  # the budget held (EOS comes on top)
    assert corrector.truncated_tokens > 0  # WMT systems' outputs do not all fit 120 tokens


def test_batch_padding_does_not_change_outputs(task_spm_path, wmt_records):
    corrector = tiny_corrector(task_spm_path)
    ids = [corrector.prepare(r) for r in wmt_records[:2]]
    alone = [corrector.decode_ids([i], 1)[0][0] for i in ids]
    padded, _ = corrector.decode_ids(ids, row_bucket(len(ids) + 1, 8))
    assert padded == alone
    assert corrector.correct(wmt_records[:2], batch_size=4) == alone


def test_row_bucket():
    assert [row_bucket(n, 8) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert row_bucket(5, 6) == 6 and row_bucket(3, 3) == 3


def test_too_long_input_is_refused(task_spm_path):
    corrector = tiny_corrector(task_spm_path)
    record = pool_record("word " * 500, ["a candidate"])
    with pytest.raises(InputTooLongError, match="limit is 384"):
        corrector.prepare(record)


def test_from_model_dir_restores_a_trainer_checkpoint(task_spm_path, wmt_records, tmp_path):
    from lmcor.training import checkpointing, models, state as state_lib
    from lmcor.models import partitioning

    config = tiny_config(task_spm_path)
    model = models.t5_model(preset="tiny", vocab_size=config.vocab_size)
    optimizer = state_lib.make_optimizer(state_lib.make_schedule())
    mesh = partitioning.make_mesh(1, 1)
    state, _ = state_lib.create_state(model.init_fn, optimizer, mesh, seed=3,
                                      init_params=tiny_params(config, seed=7))
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    ckpt.save(5, state, {"step": 5}, force=True)
    ckpt.close()
    (tmp_path / "config.gin").write_text(
        "train.model = @t5_model()\n"
        "t5_model.preset = 'tiny'\n"
        f"t5_model.vocab_size = {config.vocab_size}\n"
        f"task_vocabulary.spm_model = '{task_spm_path}'\n"
        "corrector_options.k = 3\n"
        "corrector_settings.beam_size = 2\n"
        "corrector_settings.max_decode_tokens = 6\n"
        "corrector_settings.length_bucket = 64\n"
        "train.data = @some_data_factory_serving_never_imports\n")
    try:
        loaded = Corrector.from_model_dir(str(tmp_path))
    finally:
        gin.clear_config()
    saved = jax.tree.leaves(jax.device_get(state.params))
    restored = jax.tree.leaves(jax.device_get(loaded.params))
    assert len(saved) == len(restored)
    assert all(np.array_equal(a, b) for a, b in zip(saved, restored))
    assert loaded.options.k == 3 and loaded.settings.beam_size == 2
    direct = tiny_corrector(task_spm_path, options=pp.CorrectorOptions(k=3))
    direct.params = jax.device_get(state.params)
    assert loaded.correct(wmt_records[:2]) == direct.correct(wmt_records[:2])


def test_from_model_dir_without_config_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.gin"):
        Corrector.from_model_dir(str(tmp_path))
