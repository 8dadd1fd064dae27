"""Corrector inference: same input as the SeqIO training task, batch-padding invariance,
input limits, and loading a MODEL_DIR written by the trainer's own checkpointer."""
import dataclasses
import itertools
import random

import gin
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf
from flax import linen as nn

from lmcor.data import preprocessors as pp
from lmcor.data.pool_schema import pool_record
from lmcor.inference.corrector import Corrector
from lmcor.inference.settings import CorrectorSettings, InputTooLongError, row_bucket, row_buckets
from lmcor.data.corrector_input import CorrectorOptions
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
    opts = CorrectorOptions(k=3, max_input_tokens=120)
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
    assert row_buckets(8) == (1, 2, 4, 8) and row_buckets(6) == (1, 2, 4, 6)


def test_decode_widths_are_few_and_pad_by_at_most_the_growth():
    settings = CorrectorSettings()  # length_bucket 32, growth 1.25, up to 1024 tokens
    widths = settings.widths
    assert widths == (32, 64, 96, 128, 160, 224, 288, 384, 480, 608, 768, 960, 1024)
    assert all(w % 32 == 0 for w in widths) and widths[-1] >= settings.max_input_tokens
    # Past a few buckets each width is the previous one grown by 1.25, rounded up to the grid.
    assert all(b <= max(a + 32, 1.25 * a + 32) for a, b in zip(widths, widths[1:]))
    every = CorrectorSettings(length_bucket=64, max_input_tokens=300, length_growth=1.0).widths
    assert every == (64, 128, 192, 256, 320)
    assert CorrectorSettings(length_bucket=128, max_input_tokens=100).widths == (128,)
    with pytest.raises(ValueError, match="length_growth"):
        CorrectorSettings(length_growth=0.5)


def test_width_bucket_is_the_smallest_width_that_fits(task_spm_path):
    corrector = tiny_corrector(task_spm_path)  # widths 64 ... 384
    for n in range(1, corrector.settings.max_input_tokens + 1):
        width = corrector.width_bucket(n)
        assert width >= n and width in corrector.settings.widths
        assert all(w < n for w in corrector.settings.widths if w < width)
    with pytest.raises(InputTooLongError):
        corrector.width_bucket(corrector.settings.widths[-1] + 1)


def test_after_warmup_no_batch_compiles(task_spm_path):
    """Warm-up covers every (rows, width) a batch of at most max_rows accepted inputs can
    need: decoding batches of every size and of lengths across every width adds no executable."""
    shared = shared_corrector(task_spm_path)
    settings = dataclasses.replace(shared.settings, max_input_tokens=150)  # widths 64/128/192
    corrector = Corrector(shared.lm, shared.params, shared.vocab, shared.options, settings)
    stats = corrector.warmup(max_rows=4)
    assert stats["shapes"] == len(corrector.decode_shapes(4)) == 3 * 3
    before = corrector.compiled_executables()
    assert before >= stats["shapes"]
    rng = random.Random(0)
    lengths = (1, 2, 63, 64, 65, 127, 128, 129, 150)
    for n in (1, 2, 3, 4, 3, 2, 1, 4):
        batch = [[rng.randrange(3, 200) for _ in range(rng.choice(lengths))] for _ in range(n)]
        texts, compile_s = corrector.decode_ids(batch, row_bucket(n, 4))
        assert len(texts) == n and compile_s == 0.0
    assert corrector.compiled_executables() == before
    # A shape warm-up did not cover (7 rows) is seen by the counter and in decode_ids' result.
    assert corrector.decode_ids([[5] * 10] * 3, 7)[1] > 0
    assert corrector.compiled_executables() == before + 1


def test_too_long_input_is_refused(task_spm_path):
    corrector = tiny_corrector(task_spm_path)
    record = pool_record("word " * 500, ["a candidate"])
    with pytest.raises(InputTooLongError, match="limit is 384"):
        corrector.prepare(record)


def test_from_model_dir_restores_a_trainer_checkpoint(task_spm_path, wmt_records, tmp_path,
                                                      monkeypatch):
    config = tiny_config(task_spm_path)
    saved = write_model_dir(tmp_path / "run", task_spm_path, tiny_params(config, seed=7),
                            extra_gin=("corrector_options.k = 3\n"
                                       "train.data = @some_data_factory_serving_never_imports\n"))
    monkeypatch.chdir(tmp_path)  # a relative MODEL_DIR, as users type it
    try:
        loaded = Corrector.from_model_dir("run")
    finally:
        gin.clear_config()
    restored = jax.tree.leaves(jax.device_get(loaded.params))
    assert len(jax.tree.leaves(saved)) == len(restored)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(saved), restored))
    assert loaded.options.k == 3 and loaded.settings.beam_size == 2
    shared = shared_corrector(task_spm_path)  # its compiled decode loop is reused here
    direct = Corrector(shared.lm, saved, shared.vocab, CorrectorOptions(k=3), shared.settings)
    assert loaded.correct(wmt_records[:2]) == direct.correct(wmt_records[:2])


def test_a_finished_run_is_read_at_its_best_validated_step(task_spm_path, tmp_path):
    """A run that kept its best checkpoint (step 5) and a later, worse one (step 9): evaluation,
    export and serving read step 5, which the trainer's train_summary.json names, not the latest
    (an Orbax manager opened without the run's metric reports the latest as best)."""
    import json

    from lmcor.checkpoints.trained_run import checkpoint_step
    from lmcor.inference.run_dir import trained_identity

    config = tiny_config(task_spm_path)
    best = write_model_dir(tmp_path, task_spm_path, tiny_params(config, seed=1), step=5)
    latest = write_model_dir(tmp_path, task_spm_path, tiny_params(config, seed=2), step=9)
    checkpoints = str(tmp_path / "checkpoints")
    assert checkpoint_step(checkpoints) == 9  # a run still training: its latest step
    (tmp_path / "train_summary.json").write_text(json.dumps({"step": 9, "best_step": 5}))
    assert checkpoint_step(checkpoints) == 5 and checkpoint_step(checkpoints, 9) == 9
    assert trained_identity(str(tmp_path)) == {"step": 5}
    try:
        loaded = Corrector.from_model_dir(str(tmp_path))
    finally:
        gin.clear_config()
    restored = jax.tree.leaves(jax.device_get(loaded.params))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(best), restored))
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(latest), restored))
    # A summary naming a step that was not kept falls back to the latest.
    (tmp_path / "train_summary.json").write_text(json.dumps({"step": 9, "best_step": 7}))
    assert checkpoint_step(checkpoints) == 9


def test_from_model_dir_without_config_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.gin"):
        Corrector.from_model_dir(str(tmp_path))


def _tiny_gemma_corrector(task_spm_path, task_ids=None):
    """A random tiny Gemma corrector over the task SentencePiece vocabulary; with `task_ids`, a
    task-vocabulary one cut to them, as `gemma_model.vocab = "task"` trains."""
    from lmcor.data.task_vocab import TaskVocab
    from lmcor.models.gemma import Gemma3, GemmaConfig, GemmaLM

    vocab = seqio.SentencePieceVocabulary(task_spm_path)
    config = GemmaConfig.preset("tiny", vocab_size=vocab.vocab_size)
    params = nn.unbox(Gemma3(config).init(jax.random.key(0), np.ones((1, 8), np.int32)))
    params = params["params"]
    settings = CorrectorSettings(beam_size=2, max_decode_tokens=6, length_bucket=64)
    if task_ids is None:
        return Corrector(config, params, vocab, settings=settings)
    task = TaskVocab(task_ids, config.vocab_size)
    table = np.asarray(params["embedder"]["embedding"])
    cut = dict(params, embedder={"embedding": table[task.ids]})
    lm = GemmaLM(dataclasses.replace(config, vocab_size=task.size), vocab_map=task)
    return Corrector(lm, cut, vocab, settings=settings, base_embedding=table)


def test_a_task_vocabulary_corrector_reads_and_scores_pieces_it_lacks_as_the_base_does(
        task_spm_path, wmt_records):
    from lmcor.decode import pad_prompts

    full = _tiny_gemma_corrector(task_spm_path)
    ids = [full.prepare(r) for r in wmt_records]
    narrow = _tiny_gemma_corrector(task_spm_path, task_ids=ids[0])  # the others hold pieces
    task = narrow.lm.vocab_map                                       # it lacks
    lm, params = narrow.widened_vocabulary(ids)
    wide = lm.vocab_map
    assert set(wide.ids.tolist()) == set(task.ids.tolist()) | set(itertools.chain(*ids))
    assert wide.size > task.size

    batch = pad_prompts(ids, encdec=False, pad_id=0, bucket=64)
    want, _ = full.lm.prefill(full.params, batch, 4)
    got, _ = lm.prefill(params, dict(batch, tokens=wide.to_task(batch["tokens"])), 4)
    # Same logits as the whole-vocabulary model at every kept id: the added rows are the
    # base's, placed at their compact ids, for reading the input and for scoring the output.
    np.testing.assert_allclose(np.asarray(got), np.asarray(want)[:, wide.ids], atol=2e-5)
    unwidened, _ = narrow.lm.prefill(narrow.params,
                                     dict(batch, tokens=task.to_task(batch["tokens"])), 4)
    assert not np.allclose(np.asarray(unwidened)[1:], np.asarray(want)[1:, task.ids], atol=1e-3)

    out = narrow.correct(wmt_records)
    assert narrow.last_oov["widened_by"] == wide.size - task.size
    assert narrow.lm.vocab_map is task  # the widening lasts one call
    assert out == Corrector(lm, params, narrow.vocab, settings=narrow.settings).correct(
        wmt_records)


def test_validation_during_training_widens_the_task_vocabulary_once_and_keeps_its_adapter(
        task_spm_path, wmt_records):
    """Periodic validation decodes with the pieces of its inputs added, as the table's test
    decode does, and reuses one widened adapter (its compiled loops) across evaluations."""
    from lmcor.training.validation import Evaluator

    full = _tiny_gemma_corrector(task_spm_path)
    ids = [full.prepare(r) for r in wmt_records]
    narrow = _tiny_gemma_corrector(task_spm_path, task_ids=ids[0])
    ev = Evaluator(task="unused", feature_lengths={"inputs": 8, "targets": 8})
    lm, params = ev._widen(narrow.lm, narrow.params, narrow.base_embedding, ids)
    want_lm, want_params = narrow.widened_vocabulary(ids)
    assert lm is not narrow.lm and np.array_equal(lm.vocab_map.ids, want_lm.vocab_map.ids)
    np.testing.assert_array_equal(np.asarray(params["embedder"]["embedding"]),
                                  np.asarray(want_params["embedder"]["embedding"]))
    again, params2 = ev._widen(narrow.lm, narrow.params, narrow.base_embedding, ids)
    assert again is lm  # the next evaluation runs the loops the first one compiled
    np.testing.assert_array_equal(np.asarray(params2["embedder"]["embedding"]),
                                  np.asarray(params["embedder"]["embedding"]))
    off = Evaluator(task="unused", feature_lengths={"inputs": 8, "targets": 8}, widen_vocab=False)
    assert off._widen(narrow.lm, narrow.params, narrow.base_embedding, ids)[0] is narrow.lm


def test_decoding_longest_first_gives_each_record_its_own_output_and_resumes_in_that_order(
        task_spm_path, wmt_records):
    import dataclasses as dc

    from _tiny_corrector import SETTINGS
    base = shared_corrector(task_spm_path)
    records = wmt_records[:3]
    alone = [base.decode_ids([base.prepare(r)], 1)[0][0] for r in records]
    by_length = tiny_corrector(task_spm_path, settings=dc.replace(SETTINGS, order_by_length=True))
    lengths = [len(by_length.prepare(r)) for r in records]
    longest_first = sorted(range(3), key=lambda i: -lengths[i])
    # The order really changes here, and the outputs tell the records apart.
    assert longest_first != [0, 1, 2] and len(set(alone)) == 3
    saved = []
    assert by_length.correct(records, batch_size=1,
                             on_batch=lambda outs: saved.append(list(outs))) == alone
    # A caller saves the outputs in decode order; resumed after the first batch, the call
    # decodes the rest and still returns record order.
    assert saved[-1] == [alone[i] for i in longest_first]
    assert by_length.correct(records, batch_size=1, done=saved[0]) == alone


def test_a_sampling_corrector_draws_from_its_model_and_repeats_by_seed(task_spm_path,
                                                                       wmt_records):
    """corrector_settings.temperature > 0 samples: near-zero temperature is the greedy
    output; at temperature 1 each seed gives its own outputs, the same ones every time."""
    shared = shared_corrector(task_spm_path)

    def sampled(temperature, seed):
        settings = dataclasses.replace(shared.settings, beam_size=1, temperature=temperature,
                                       seed=seed)
        return Corrector(shared.lm, shared.params, shared.vocab, shared.options,
                         settings).correct(wmt_records, batch_size=4)

    greedy = sampled(0.0, 0)
    assert sampled(1e-4, 0) == greedy
    first = sampled(1.0, 0)
    assert first == sampled(1.0, 0)
    assert first != sampled(1.0, 1) and first != greedy
    with pytest.raises(ValueError, match="set beam_size = 1 to sample"):
        CorrectorSettings(beam_size=2, temperature=0.6)
