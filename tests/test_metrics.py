"""Metrics against hand-computed values and against sacreBLEU's own bootstrap implementation."""
import math

import numpy as np
import pytest
import sacrebleu
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

from lmcor import metrics
from lmcor.io_utils import read_lines


def test_bleu_chrf_ter_identity_and_multi_reference():
    hyps = ["the cat sat on the mat today", "a dog barked loudly at night"]
    other = ["a cat was sitting on a mat", "the dog was barking"]
    assert metrics.bleu(hyps, [hyps]) == pytest.approx(100.0)
    assert metrics.chrf(hyps, [hyps]) == pytest.approx(100.0)
    assert metrics.ter(hyps, [hyps]) == pytest.approx(0.0)
    # A second reference stream that contains the hypothesis lifts BLEU to 100.
    assert metrics.bleu(hyps, [other, hyps]) == pytest.approx(100.0)
    assert metrics.bleu(hyps, [other]) < 30


def test_variable_number_of_references():
    hyps = ["the cat sat on the mat today", "a dog barked loudly at night"]
    # Segment 0 has one reference, segment 1 two: None fills the gap (sacreBLEU's layout).
    refs = [["the cat sat on the mat today", "the dog barked at night"],
            [None, "a dog barked loudly at night"]]
    assert metrics.bleu(hyps, refs) == pytest.approx(100.0)


def test_rouge_hand_computed():
    # rouge1: P = 3/3, R = 3/6 -> F = 2/3; rouge2: P = 2/2, R = 2/5 -> F = 4/7.
    scores = metrics.rouge(["the cat sat"], [["the cat sat on the mat"]])
    assert scores["rouge1"] == pytest.approx(100 * 2 / 3)
    assert scores["rouge2"] == pytest.approx(100 * 4 / 7)
    # Multiple references: the best one counts.
    assert metrics.rouge(["the cat sat"], [["dogs bark"], ["the cat sat"]])["rouge1"] == pytest.approx(100)


def test_rouge_lsum_uses_newline_sentences():
    # Sentence order swapped: a single LCS over the text misses half, summary-level LCS does not.
    scores = metrics.rouge(["alpha beta gamma\ndelta epsilon zeta"], [["delta epsilon zeta\nalpha beta gamma"]])
    assert scores["rougeLsum"] == pytest.approx(100.0)
    assert scores["rouge1"] == pytest.approx(100.0)


def test_gleu_hand_computed():
    srcs = ["a b c d", "a b c d"]
    refs = [["a b x d", "a b x d"]]
    hyps = ["a b x d", "a b c d"]  # sentence 2 keeps the source n-gram the reference changed
    # Totals by hand: unigrams 4+(3-1)=6/8, bigrams 3+max(1-2,0)=3/6, trigrams 2/4, 4-grams 1/2.
    expected = math.exp((math.log(6 / 8) + math.log(3 / 6) + math.log(2 / 4) + math.log(1 / 2)) / 4)
    assert metrics.gleu(srcs, hyps, refs) == pytest.approx(100 * expected)
    assert metrics.gleu(srcs, ["a b x d"] * 2, refs) == pytest.approx(100.0)


def test_gleu_brevity_penalty_and_duplicated_references():
    srcs = ["one two three four five six"]
    refs = [["one two three four five six seven eight"]]
    hyps = ["one two three four five six"]
    expected = math.exp(1 - 8 / 6)  # every n-gram matches; only the brevity penalty remains
    assert metrics.gleu(srcs, hyps, refs) == pytest.approx(100 * expected)
    assert metrics.gleu(srcs, hyps, refs * 3) == pytest.approx(100 * expected)


def test_gleu_needs_aligned_inputs():
    with pytest.raises(ValueError, match="sources have 1 segments, hypotheses 2"):
        metrics.gleu(["a"], ["a", "b"], [["a", "b"]])


@pytest.fixture(scope="module")
def wmt22(data_dir):
    folder = data_dir / "wmt_en_de" / "wmt22"
    n = 300  # a slice keeps the bootstrap tests fast
    return (read_lines(folder / "reference.A.de")[:n], read_lines(folder / "systems" / "OpenNMT.de")[:n],
            read_lines(folder / "systems" / "PROMT.de")[:n])


def test_paired_bootstrap_matches_sacrebleu(wmt22, monkeypatch):
    ref, base, system = wmt22
    monkeypatch.setenv("SACREBLEU_SEED", "12345")
    _, results = PairedTest([("base", base), ("sys", system)], {"BLEU": BLEU(), "chrF": CHRF()}, [ref],
                            test_type="bs", n_samples=100)()
    for ours_name, theirs in (("bleu", results["BLEU"][1]), ("chrf", results["chrF2"][1])):
        ours = metrics.paired_bootstrap(ours_name, base, system, [ref], n_samples=100, seed=12345)
        assert ours["b"] == pytest.approx(theirs.score)
        assert ours["p_value"] == pytest.approx(theirs.p_value)


def test_paired_bootstrap_of_a_system_against_itself_is_not_significant(wmt22):
    ref, base, _ = wmt22
    same = metrics.paired_bootstrap("bleu", base, list(base), [ref], n_samples=100, seed=1)
    assert same["delta"] == 0.0 and same["p_value"] == 1.0


def test_bootstrap_ci_matches_sacrebleu_resamples(wmt22, monkeypatch):
    ref, _, system = wmt22
    monkeypatch.setenv("SACREBLEU_SEED", "12345")
    theirs = BLEU().corpus_score(system, [ref], n_bootstrap=100)
    ours = metrics.bootstrap_ci("bleu", system, [ref], n_samples=100, seed=12345)
    assert ours["score"] == pytest.approx(theirs.score)
    assert ours["mean"] == pytest.approx(theirs._mean, abs=1e-4)
    assert ours["low"] < ours["score"] < ours["high"]


def test_bootstrap_gleu_and_rouge():
    srcs = ["a b c d e f"] * 20 + ["g h i j k l"] * 20
    refs = [["a b x d e f"] * 20 + ["g h i j k l"] * 20, ["a b c y e f"] * 20 + ["g h i j k z"] * 20]
    hyps = ["a b x d e f"] * 10 + srcs[10:]
    ci = metrics.bootstrap_ci("gleu", hyps, refs, srcs=srcs, n_samples=50, seed=1)
    assert ci["score"] == pytest.approx(metrics.gleu(srcs, hyps, refs))
    assert ci["low"] <= ci["score"] <= ci["high"] and ci["low"] < ci["high"]
    better = metrics.paired_bootstrap("gleu", srcs, hyps, refs, srcs=srcs, n_samples=50, seed=1)
    assert better["delta"] > 0 and better["b_wins"] == 1.0
    r = metrics.bootstrap_ci("rouge1", hyps, refs, n_samples=50)
    assert r["score"] == pytest.approx(metrics.rouge(hyps, refs)["rouge1"])
    with pytest.raises(ValueError, match="GLEU needs the sources"):
        metrics.bootstrap_ci("gleu", hyps, refs)


def test_seqio_metric_functions():
    targets = [["the cat sat on the mat today"], ["x y z", "a dog barked loudly at night"]]
    preds = ["the cat sat on the mat today", "a dog barked loudly at night"]
    assert metrics.seqio_bleu(targets, preds) == {"bleu": pytest.approx(100.0)}
    plain = metrics.seqio_chrf(["a cat sat", "dogs bark"], ["a cat sat", "dogs barked"])
    assert plain["chrf"] == pytest.approx(sacrebleu.corpus_chrf(["a cat sat", "dogs barked"],
                                                                [["a cat sat", "dogs bark"]]).score)
    assert set(metrics.seqio_rouge(["a b"], ["a b"])) == {"rouge1", "rouge2", "rougeLsum"}
    gl = metrics.seqio_gleu([{"source": "a b c d", "references": ["a b x d"]}], ["a b x d"])
    assert gl == {"gleu": pytest.approx(100.0)}
    # TER in percent of reference words: no edit against a matching reference, then one
    # substitution over 4 words, then 2 deletions over 4.
    assert metrics.seqio_ter(targets, preds)["ter"] == pytest.approx(0.0)
    assert metrics.seqio_ter([["a b c d"]], ["a b x d"])["ter"] == pytest.approx(25.0)
    assert metrics.seqio_ter([["a b c d"]], ["a b"])["ter"] == pytest.approx(50.0)


def test_bootstrap_uses_the_tokenizer_of_the_score(wmt22):
    ref, base, system = wmt22
    expected = sacrebleu.corpus_bleu(system, [ref], tokenize="char").score
    assert abs(expected - sacrebleu.corpus_bleu(system, [ref]).score) > 1  # the choice matters here
    ci = metrics.bootstrap_ci("bleu", system, [ref], n_samples=20, seed=1, tokenize="char")
    assert ci["score"] == pytest.approx(expected)
    test = metrics.paired_bootstrap("bleu", base, system, [ref], n_samples=20, seed=1, tokenize="char")
    assert test["b"] == pytest.approx(expected)
    assert test["a"] == pytest.approx(sacrebleu.corpus_bleu(base, [ref], tokenize="char").score)
    with pytest.raises(ValueError, match="tokenize applies to bleu only"):
        metrics.bootstrap_ci("chrf", system, [ref], tokenize="char")
