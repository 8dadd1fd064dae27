"""Corrector-input preprocessing: template, candidate choice, and the token budget."""
import itertools
import logging

import pytest
import seqio
import tensorflow as tf

from lmcor.data import preprocessors as pp
from lmcor.data.importers import import_wmt

SEP = " <sep> "


def _cand(text, decoding="sample", generator="llm"):
    return {"text": text, "generator": generator, "prompt_id": None, "decoding": decoding,
            "temperature": 0.0 if decoding == "greedy" else 0.6, "logprob": None}


def _record(rid="r1", source="the src", cands=None, refs=("ref a", "ref b")):
    return {"id": rid, "source": source, "references": list(refs), "meta": {},
            "candidates": cands if cands is not None else
            [_cand("s1"), _cand("g", "greedy"), _cand("s2"), _cand("s3"), _cand("s1")]}


@pytest.fixture(scope="module")
def vocab(task_spm_path):
    return seqio.SentencePieceVocabulary(task_spm_path)


def _candidates_of(text):
    return text.split(" candidates: ", 1)[1].split(SEP)


def test_template_greedy_first_dedupe_and_k():
    opts = pp.CorrectorOptions(k=3)
    text, report = pp.build_corrector_input(_record(), "lmcor", opts)
    assert text == "source: the src <sep> candidates: g <sep> s1 <sep> s2"
    assert report.truncated_tokens == 0
    assert pp.build_corrector_input(_record(), "finetune", opts)[0] == "source: the src"
    assert pp.build_corrector_input(_record(), "lmcor_single", opts)[0] == \
        "source: the src <sep> candidates: g"
    custom = pp.CorrectorOptions(k=2, separator="|", dedupe=False, selection="all")
    assert pp.build_corrector_input(_record(), "lmcor", custom)[0] == \
        "source: the src | candidates: s1 | g | s2 | s3 | s1"


def test_random_selection_and_shuffled_order_are_seeded_per_id():
    cands = [_cand(f"c{i}") for i in range(8)]
    rand = pp.CorrectorOptions(k=3, selection="random", seed=1)
    picks = {pp.select_candidates(_record(f"id{i}", cands=cands), "lmcor", rand)[0] for i in range(20)}
    assert len(picks) > 1, "random selection ignores the example id"
    first = pp.select_candidates(_record("x", cands=cands), "lmcor", rand)
    assert first == pp.select_candidates(_record("x", cands=list(cands)), "lmcor", rand)
    assert len(first) == 3 and len(set(first)) == 3
    shuf = pp.CorrectorOptions(k=8, order="shuffled", seed=3)
    orders = [pp.select_candidates(_record(f"id{i}", cands=cands), "lmcor", shuf) for i in range(10)]
    assert all(sorted(o) == sorted(c["text"] for c in cands) for o in orders)
    assert any(o != [c["text"] for c in cands] for o in orders)
    other_seed = pp.CorrectorOptions(k=8, order="shuffled", seed=4)
    assert orders != [pp.select_candidates(_record(f"id{i}", cands=cands), "lmcor", other_seed)
                      for i in range(10)]


def test_generator_filter_and_missing_candidates_are_errors():
    cands = [_cand("a", "greedy", "m1"), _cand("b", "greedy", "m2"), _cand("c", "sample", "m2")]
    only_m2 = pp.CorrectorOptions(generators=("m2",))
    assert pp.select_candidates(_record(cands=cands), "lmcor", only_m2) == ["b", "c"]
    assert pp.select_candidates(_record(cands=cands), "lmcor_single", only_m2) == ["b"]
    with pytest.raises(ValueError, match="'r1': no candidates"):
        pp.build_corrector_input(_record(cands=[]), "lmcor", pp.CorrectorOptions())
    with pytest.raises(ValueError, match="no greedy candidate"):
        pp.build_corrector_input(_record(cands=[_cand("s")]), "lmcor_single", pp.CorrectorOptions())


def test_water_fill_keeps_short_items_and_splits_the_rest():
    assert pp.water_fill([3, 100, 100], 43) == [3, 20, 20]
    assert pp.water_fill([5, 5], 100) == [5, 5]
    alloc = pp.water_fill([50, 1, 70, 9], 20)
    assert sum(alloc) <= 20 and min(alloc) >= 1 and alloc[1] == 1


def test_budget_keeps_every_candidate_and_counts_removed_tokens(vocab, data_dir, caplog):
    wmt = next(itertools.islice(import_wmt(data_dir, "wmt22"), 7, None))
    long_texts = [" ".join([c["text"]] * 4) for c in wmt["candidates"][:4]]
    rec = _record(source=wmt["source"], cands=[_cand(long_texts[0], "greedy")]
                  + [_cand(t) for t in long_texts[1:]] + [_cand("Kurz.")])
    opts = pp.CorrectorOptions(k=5, dedupe=False, max_input_tokens=120, max_candidate_tokens=40)
    before = pp.log_truncation_totals()
    text, report = pp.build_corrector_input(rec, "lmcor", opts, vocab)
    kept = _candidates_of(text)
    assert len(kept) == 5 and report.dropped_candidates == 0
    assert all(len(vocab.encode(k)) >= 1 for k in kept)
    assert kept[-1] == "Kurz.", "a candidate that fits must be kept whole"
    assert all(long.startswith(k.rstrip()[:10]) for long, k in zip(long_texts, kept))
    removed = sum(len(vocab.encode(t)) - len(vocab.encode(k))
                  for t, k in zip(long_texts + ["Kurz."], kept))
    src_kept = text[len("source: "):text.index(SEP)]
    removed_src = len(vocab.encode(rec["source"])) - len(vocab.encode(src_kept))
    assert report.candidate_tokens_removed == removed > 0
    assert report.source_tokens_removed == removed_src
    assert report.truncated_tokens == removed + removed_src
    assert report.truncated_candidates == 4
    assert max(len(vocab.encode(k)) for k in kept) <= 40
    assert len(vocab.encode(text)) <= 120
    with caplog.at_level(logging.INFO):
        after = pp.log_truncation_totals()
    assert after["truncated_tokens"] - before["truncated_tokens"] == report.truncated_tokens
    assert "truncated_tokens" in caplog.text


def test_budget_smaller_than_candidate_count_drops_and_counts(vocab):
    rec = _record(source="x " * 50, cands=[_cand(f"candidate number {i} " * 5) for i in range(6)])
    overhead = len(vocab.encode(pp.format_input("", [""] * 3, "<sep>")))
    opts = pp.CorrectorOptions(k=6, max_input_tokens=overhead + 4)
    text, report = pp.build_corrector_input(rec, "lmcor", opts, vocab)
    kept = _candidates_of(text)
    assert report.dropped_candidates == 6 - len(kept) > 0 and len(kept) == 3
    assert all(len(vocab.encode(k)) >= 1 for k in kept)
    with pytest.raises(ValueError, match="max_input_tokens=2 leaves no room"):
        pp.build_corrector_input(rec, "lmcor", pp.CorrectorOptions(max_input_tokens=2), vocab)


def _raw(rec):
    c = rec["candidates"]
    return {"id": rec["id"], "source": rec["source"], "references": rec["references"],
            "candidates": {"text": [x["text"] for x in c], "generator": [x["generator"] for x in c],
                           "decoding": [x["decoding"] for x in c]}}


def test_seqio_preprocessor_matches_python_and_splits_references():
    recs = [_record("a"), _record("b", refs=("only",))]
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
    whole = list(pp.corrector_example(ds).as_numpy_iterator())
    assert pp.references_of(whole[0]) == ["ref a", "ref b"]
    assert whole[0]["inputs"].decode() == pp.build_corrector_input(recs[0], "lmcor")[0]


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


def test_output_marker_ends_every_variant_and_counts_against_the_budget(vocab):
    marker = "<sep> output:"
    for variant in ("finetune", "lmcor_single", "lmcor"):
        text, _ = pp.build_corrector_input(_record(), variant,
                                           pp.CorrectorOptions(output_marker=marker))
        assert text.endswith(" " + marker) and text.count("output:") == 1
    rec = _record(source="x " * 50, cands=[_cand(f"candidate number {i} " * 8) for i in range(5)])
    opts = pp.CorrectorOptions(max_input_tokens=90, output_marker=marker)
    text, report = pp.build_corrector_input(rec, "lmcor", opts, vocab)
    assert text.endswith(" " + marker) and report.truncated_tokens > 0
    assert len(vocab.encode(text)) <= 90
