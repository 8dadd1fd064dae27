"""Corrector input text: template, candidate choice, the token budget, and no TensorFlow."""
import itertools
import logging
import os
import subprocess
import sys

import gin
import pytest
import seqio

from lmcor.data import corrector_input as ci
from lmcor.data.importers import import_wmt

from _pool_records import cand, record

SEP = " <sep> "


@pytest.fixture(scope="module")
def vocab(task_spm_path):
    return seqio.SentencePieceVocabulary(task_spm_path)


def _candidates_of(text):
    return text.split(" candidates: ", 1)[1].split(SEP)


def test_template_greedy_first_dedupe_and_k():
    opts = ci.CorrectorOptions(k=3)
    text, report = ci.build_corrector_input(record(), "lmcor", opts)
    assert text == "source: the src <sep> candidates: g <sep> s1 <sep> s2"
    assert report.truncated_tokens == 0
    assert ci.build_corrector_input(record(), "finetune", opts)[0] == "source: the src"
    assert ci.build_corrector_input(record(), "lmcor_single", opts)[0] == \
        "source: the src <sep> candidates: g"
    custom = ci.CorrectorOptions(k=2, separator="|", dedupe=False, selection="all")
    assert ci.build_corrector_input(record(), "lmcor", custom)[0] == \
        "source: the src | candidates: s1 | g | s2 | s3 | s1"


def test_random_selection_and_shuffled_order_are_seeded_per_id():
    cands = [cand(f"c{i}") for i in range(8)]
    rand = ci.CorrectorOptions(k=3, selection="random", seed=1)
    picks = {ci.select_candidates(record(f"id{i}", cands=cands), "lmcor", rand)[0] for i in range(20)}
    assert len(picks) > 1, "random selection ignores the example id"
    first = ci.select_candidates(record("x", cands=cands), "lmcor", rand)
    assert first == ci.select_candidates(record("x", cands=list(cands)), "lmcor", rand)
    assert len(first) == 3 and len(set(first)) == 3
    shuf = ci.CorrectorOptions(k=8, order="shuffled", seed=3)
    orders = [ci.select_candidates(record(f"id{i}", cands=cands), "lmcor", shuf) for i in range(10)]
    assert all(sorted(o) == sorted(c["text"] for c in cands) for o in orders)
    assert any(o != [c["text"] for c in cands] for o in orders)
    other_seed = ci.CorrectorOptions(k=8, order="shuffled", seed=4)
    assert orders != [ci.select_candidates(record(f"id{i}", cands=cands), "lmcor", other_seed)
                      for i in range(10)]


def test_reference_candidate_shows_another_reference_never_the_target():
    refs = [f"ref {i}" for i in range(6)]

    def example(rid, target):  # one training example, as one_example_per_reference yields it
        rec = record(rid, refs=[refs[target]])
        return dict(rec, peer_references=[r for j, r in enumerate(refs) if j != target])

    always = ci.CorrectorOptions(reference_candidate=1.0)
    plain = ci.CorrectorOptions()
    seen = set()
    for i in range(24):
        ex = example(f"id{i}", i % 6)
        got = _candidates_of(ci.build_corrector_input(ex, "lmcor", always)[0])
        before = _candidates_of(ci.build_corrector_input(ex, "lmcor", plain)[0])
        changed = [j for j, (a, b) in enumerate(zip(got, before)) if a != b]
        assert len(got) == len(before) and len(changed) == 1, (got, before)
        assert got[changed[0]] in ex["peer_references"]
        assert refs[i % 6] not in got
        seen.add(changed[0])
        assert got == _candidates_of(ci.build_corrector_input(ex, "lmcor", always)[0])
    assert len(seen) > 1, "the planted reference always takes the same place"
    # Evaluation and test records carry no peer references: their input is never changed.
    assert ci.build_corrector_input(record(), "lmcor", always) == \
        ci.build_corrector_input(record(), "lmcor", plain)
    assert ci.build_corrector_input(example("f", 0), "finetune", always)[0] == "source: the src"
    half = ci.CorrectorOptions(reference_candidate=0.5)
    planted = sum(ci.build_corrector_input(example(f"h{i}", 0), "lmcor", half)[0]
                  != ci.build_corrector_input(example(f"h{i}", 0), "lmcor", plain)[0]
                  for i in range(200))
    assert 70 < planted < 130
    with pytest.raises(ValueError, match="reference_candidate"):
        ci.CorrectorOptions(reference_candidate=1.5)


def test_gin_binds_the_options_class_and_explicit_arguments_win():
    with gin.unlock_config():
        gin.parse_config(["corrector_options.k = 3", "corrector_options.generators = ['m1', 'm2']"])
    try:
        bound = ci.CorrectorOptions()
        assert (bound.k, bound.generators, bound.order) == (3, ("m1", "m2"), "fixed")
        hash(bound)  # the Gin list became a tuple: options stay usable as a cache key
        assert ci.CorrectorOptions(k=2).k == 2
    finally:
        gin.clear_config()
    assert ci.CorrectorOptions().k == 5
    with pytest.raises(ValueError, match="corrector_options.k=0"):
        ci.CorrectorOptions(k=0)


def test_generator_filter_and_missing_candidates_are_errors():
    cands = [cand("a", "greedy", "m1"), cand("b", "greedy", "m2"), cand("c", "sample", "m2")]
    only_m2 = ci.CorrectorOptions(generators=("m2",))
    assert ci.select_candidates(record(cands=cands), "lmcor", only_m2) == ["b", "c"]
    assert ci.select_candidates(record(cands=cands), "lmcor_single", only_m2) == ["b"]
    with pytest.raises(ValueError, match="'r1': no candidates"):
        ci.build_corrector_input(record(cands=[]), "lmcor", ci.CorrectorOptions())
    with pytest.raises(ValueError, match="no greedy candidate"):
        ci.build_corrector_input(record(cands=[cand("s")]), "lmcor_single", ci.CorrectorOptions())


def test_water_fill_keeps_short_items_and_splits_the_rest():
    assert ci.water_fill([3, 100, 100], 43) == [3, 20, 20]
    assert ci.water_fill([5, 5], 100) == [5, 5]
    alloc = ci.water_fill([50, 1, 70, 9], 20)
    assert sum(alloc) <= 20 and min(alloc) >= 1 and alloc[1] == 1


def test_budget_keeps_every_candidate_and_counts_removed_tokens(vocab, data_dir, caplog):
    wmt = next(itertools.islice(import_wmt(data_dir, "wmt22"), 7, None))
    long_texts = [" ".join([c["text"]] * 4) for c in wmt["candidates"][:4]]
    rec = record(source=wmt["source"], cands=[cand(long_texts[0], "greedy")]
                  + [cand(t) for t in long_texts[1:]] + [cand("Kurz.")])
    opts = ci.CorrectorOptions(k=5, dedupe=False, max_input_tokens=120, max_candidate_tokens=40)
    before = ci.log_truncation_totals()
    text, report = ci.build_corrector_input(rec, "lmcor", opts, vocab)
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
        after = ci.log_truncation_totals()
    assert after["truncated_tokens"] - before["truncated_tokens"] == report.truncated_tokens
    assert "truncated_tokens" in caplog.text


def test_budget_smaller_than_candidate_count_drops_and_counts(vocab):
    rec = record(source="x " * 50, cands=[cand(f"candidate number {i} " * 5) for i in range(6)])
    overhead = len(vocab.encode(ci.format_input("", [""] * 3, "<sep>")))
    opts = ci.CorrectorOptions(k=6, max_input_tokens=overhead + 4)
    text, report = ci.build_corrector_input(rec, "lmcor", opts, vocab)
    kept = _candidates_of(text)
    assert report.dropped_candidates == 6 - len(kept) > 0 and len(kept) == 3
    assert all(len(vocab.encode(k)) >= 1 for k in kept)
    with pytest.raises(ValueError, match="max_input_tokens=2 leaves no room"):
        ci.build_corrector_input(rec, "lmcor", ci.CorrectorOptions(max_input_tokens=2), vocab)


def test_output_marker_ends_every_variant_and_counts_against_the_budget(vocab):
    marker = "<sep> output:"
    for variant in ("finetune", "lmcor_single", "lmcor"):
        text, _ = ci.build_corrector_input(record(), variant,
                                           ci.CorrectorOptions(output_marker=marker))
        assert text.endswith(" " + marker) and text.count("output:") == 1
    rec = record(source="x " * 50, cands=[cand(f"candidate number {i} " * 8) for i in range(5)])
    opts = ci.CorrectorOptions(max_input_tokens=90, output_marker=marker)
    text, report = ci.build_corrector_input(rec, "lmcor", opts, vocab)
    assert text.endswith(" " + marker) and report.truncated_tokens > 0
    assert len(vocab.encode(text)) <= 90


def test_importing_it_leaves_tensorflow_unloaded():
    # Serving builds every request's input with this module; loading TensorFlow would cost a
    # server that never runs a tf.data pipeline seconds of start-up and its memory.
    code = ("import sys, lmcor.data.corrector_input\n"
            "print(sorted({'tensorflow', 'seqio'} & set(sys.modules)))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["[]"]
