"""SeqIO preprocessing: the corrector-example preprocessor, feature converters, task vocabulary."""
import itertools

import gin
import seqio
import tensorflow as tf

from lmcor.data import corrector_input as ci
from lmcor.data import preprocessors as pp

from _pool_records import record


def _raw(rec):
    c = rec["candidates"]
    return {"id": rec["id"], "source": rec["source"], "references": rec["references"],
            "candidates": {"text": [x["text"] for x in c], "generator": [x["generator"] for x in c],
                           "decoding": [x["decoding"] for x in c]}}


def test_seqio_preprocessor_matches_python_and_splits_references():
    recs = [record("a"), record("b", refs=("only",))]
    ds = tf.data.Dataset.from_generator(
        lambda: (_raw(r) for r in recs),
        output_signature={"id": tf.TensorSpec([], tf.string), "source": tf.TensorSpec([], tf.string),
                          "references": tf.TensorSpec([None], tf.string),
                          "candidates": {k: tf.TensorSpec([None], tf.string)
                                         for k in ("text", "generator", "decoding")}})
    flat = list(pp.corrector_example(pp.one_example_per_reference(ds)).as_numpy_iterator())
    assert [(e["id"], e["targets"]) for e in flat] == [(b"a", b"ref a"), (b"a", b"ref b"),
                                                      (b"b", b"only")]
    assert [pp.references_of(e) for e in flat] == [["ref a"], ["ref b"], ["only"]]
    peers = [list(e["peer_references"]) for e in pp.one_example_per_reference(ds).as_numpy_iterator()]
    assert peers == [[b"ref b"], [b"ref a"], []]
    with gin.unlock_config():
        gin.parse_config(["corrector_options.reference_candidate = 1.0"])
    try:  # each training example may show its other reference, never its own, as a candidate
        planted = list(pp.corrector_example(pp.one_example_per_reference(ds)).as_numpy_iterator())
        plain_test = list(pp.corrector_example(ds).as_numpy_iterator())
    finally:
        gin.clear_config()
    assert b"ref b" in planted[0]["inputs"] and b"ref a" not in planted[0]["inputs"]
    assert b"ref a" in planted[1]["inputs"] and b"ref b" not in planted[1]["inputs"]
    assert planted[2]["inputs"] == flat[2]["inputs"]  # one reference: nothing to show
    assert plain_test[0]["inputs"].decode() == ci.build_corrector_input(recs[0], "lmcor")[0]
    whole = list(pp.corrector_example(ds).as_numpy_iterator())
    assert pp.references_of(whole[0]) == ["ref a", "ref b"]
    assert whole[0]["inputs"].decode() == ci.build_corrector_input(recs[0], "lmcor")[0]


def _converted(converter, examples, lengths):
    ds = tf.data.Dataset.from_generator(
        lambda: iter(examples), output_signature={k: tf.TensorSpec([None], tf.int32)
                                                  for k in ("inputs", "targets")})
    return [{k: list(v) for k, v in ex.items()} for ex in converter(ds, lengths).as_numpy_iterator()]


def test_decoder_only_converter_unpacked():
    from lmcor.data.feature_converters import DecoderOnlyFeatureConverter

    out = _converted(DecoderOnlyFeatureConverter(pack=False, bos_id=2),
                     [{"inputs": [5, 6, 1], "targets": [7, 1]}], {"inputs": 4, "targets": 3})
    assert out == [{"decoder_target_tokens": [5, 6, 7, 1, 0, 0, 0],
                    "decoder_input_tokens": [2, 5, 6, 7, 0, 0, 0],
                    "decoder_loss_weights": [0, 0, 1, 1, 0, 0, 0],
                    "decoder_segment_ids": [1, 1, 1, 1, 0, 0, 0],
                    "decoder_positions": [0, 1, 2, 3, 0, 0, 0]}]


def test_decoder_only_converter_packs_and_weights_targets_only():
    from lmcor.data.feature_converters import DecoderOnlyFeatureConverter

    examples = [{"inputs": [5, 6, 1], "targets": [7, 1]}, {"inputs": [8, 1], "targets": [9, 4, 1]}]
    out = _converted(DecoderOnlyFeatureConverter(pack=True, bos_id=2), examples,
                     {"inputs": 5, "targets": 5})
    assert out == [{"decoder_target_tokens": [5, 6, 7, 1, 8, 9, 4, 1, 0, 0],
                    "decoder_input_tokens": [2, 5, 6, 7, 2, 8, 9, 4, 0, 0],
                    "decoder_loss_weights": [0, 0, 1, 1, 0, 1, 1, 1, 0, 0],
                    "decoder_segment_ids": [1, 1, 1, 1, 2, 2, 2, 2, 0, 0],
                    "decoder_positions": [0, 1, 2, 3, 0, 1, 2, 3, 0, 0]}]


def test_task_sentencepiece_is_deterministic_cached_and_keeps_the_separator(data_dir, tmp_path):
    from lmcor.data.importers import import_jfleg
    from lmcor.data.vocab import pool_texts, train_task_sentencepiece

    texts = list(pool_texts(itertools.islice(import_jfleg(data_dir, "test"), 120)))
    a = train_task_sentencepiece(texts, 500, str(tmp_path / "a.model"))
    b = train_task_sentencepiece(texts, 500, str(tmp_path / "b.model"))
    assert open(a, "rb").read() == open(b, "rb").read()
    stamp = (tmp_path / "a.model").stat().st_mtime_ns
    train_task_sentencepiece(iter(texts), 500, a)  # same content: the cached model is kept
    assert (tmp_path / "a.model").stat().st_mtime_ns == stamp
    train_task_sentencepiece(texts[:-40], 500, a)  # other texts: retrained in place
    assert open(a, "rb").read() != open(b, "rb").read()
    vocab = seqio.SentencePieceVocabulary(b)
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    assert "<sep>" in vocab.tokenizer.encode_as_pieces("a <sep> b")  # never split into < sep >
    assert vocab.decode(list(vocab.encode("a <sep> b"))) == "a <sep> b"


def test_task_spm_model_reads_its_datasets_once_until_its_model_file_changes(data_dir, tmp_path,
                                                                             monkeypatch):
    """Gin resolves the task vocabulary on every encode; the datasets are read only when the
    model file is new to this process or was rewritten since (here by a pool of the same name)."""
    import json

    from lmcor.data.importers import import_jfleg
    from lmcor.training import seqio_data

    recs = list(itertools.islice(import_jfleg(data_dir, "test"), 120))
    pools = []
    for folder, part in (("a", recs[:60]), ("b", recs[60:])):
        (tmp_path / folder).mkdir()
        pools.append(tmp_path / folder / "pool.jsonl")  # both models: out/pool.jsonl-500.model
        pools[-1].write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    reads = []
    real = seqio_data._dataset_records
    monkeypatch.setattr(seqio_data, "_dataset_records", lambda d: reads.append(d) or real(d))
    out = str(tmp_path / "out")

    def model(pool):
        path = seqio_data.task_spm_model([str(pool)], vocab_size=500, out_dir=out)
        return path, open(path, "rb").read()

    a = model(pools[0])
    assert model(pools[0]) == a and len(reads) == 1
    b = model(pools[1])  # the same path, retrained on the other pool's text
    assert b[0] == a[0] and b[1] != a[1] and len(reads) == 2
    assert model(pools[0]) == a and len(reads) == 3  # the file changed since a was checked
    assert model(pools[0]) == a and len(reads) == 3
