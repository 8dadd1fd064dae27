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

from _tiny_corrector import (shared_corrector, tiny_config, tiny_corrector, tiny_params,
                             write_model_dir)


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
    corrector = shared_corrector(task_spm_path)
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
    config = tiny_config(task_spm_path)
    saved = write_model_dir(tmp_path, task_spm_path, tiny_params(config, seed=7), extra_gin=(
        "corrector_options.k = 3\n"
        "train.data = @some_data_factory_serving_never_imports\n"))
    try:
        loaded = Corrector.from_model_dir(str(tmp_path))
    finally:
        gin.clear_config()
    restored = jax.tree.leaves(jax.device_get(loaded.params))
    assert len(jax.tree.leaves(saved)) == len(restored)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(saved), restored))
    assert loaded.options.k == 3 and loaded.settings.beam_size == 2
    shared = shared_corrector(task_spm_path)  # its compiled decode loop is reused here
    direct = Corrector(shared.lm, saved, shared.vocab, pp.CorrectorOptions(k=3), shared.settings)
    assert loaded.correct(wmt_records[:2]) == direct.correct(wmt_records[:2])


def test_from_model_dir_without_config_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.gin"):
        Corrector.from_model_dir(str(tmp_path))
