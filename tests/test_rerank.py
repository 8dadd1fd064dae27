"""Pool baselines: sentence chrF equals sacreBLEU's, MBR/oracle choices, and the WMT figures."""
import itertools

import numpy as np
import pytest
from sacrebleu.metrics import BLEU, CHRF

from lmcor import metrics
from lmcor.evaluation import rerank
from lmcor.data.importers import import_e2e, import_wmt


def _cand(text, decoding="greedy", generator="llm"):
    return {"text": text, "generator": generator, "prompt_id": None, "decoding": decoding,
            "temperature": 0.0 if decoding == "greedy" else 0.6, "logprob": None}


def _rec(rid, cands, refs=("x",)):
    return {"id": rid, "source": "s", "references": list(refs), "candidates": cands, "meta": {}}


def test_sentence_chrf_equals_sacrebleu_on_real_text(data_dir):
    recs = list(itertools.islice(import_wmt(data_dir, "wmt23"), 3))
    texts = [c["text"] for r in recs for c in r["candidates"][:4]] + ["", "a", "Ab c"]
    got = rerank.sentence_scores(texts, texts, "chrf")
    m = CHRF()
    want = np.asarray([[m.sentence_score(h, [r]).score for r in texts] for h in texts])
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_sentence_bleu_is_sacrebleu_effective_order():
    hyps, refs = ["the cat sat", "a dog"], ["the cat sat down", "the dog"]
    got = rerank.sentence_scores(hyps, refs, "bleu")
    assert got[0, 0] == pytest.approx(BLEU(effective_order=True).sentence_score(hyps[0], [refs[0]]).score)
    with pytest.raises(ValueError, match="utility"):
        rerank.sentence_scores(hyps, refs, "meteor")


def test_mbr_picks_the_consensus_not_the_outlier():
    cands = ["zzzz qqqq", "the house is red", "the house is red.", "the home is red"]
    assert rerank.mbr_index(cands, "chrf") in (1, 2)
    assert rerank.mbr_index(["only"], "chrf") == 0
    assert rerank.mbr_index(cands, "bleu") in (1, 2)


def test_oracle_uses_the_closest_reference():
    cands = ["a completely different text", "the house is green"]
    assert rerank.oracle_index(cands, ["no overlap at all", "the house is green"]) == 1
    with pytest.raises(ValueError, match="reference"):
        rerank.oracle_index(cands, [])


def test_rows_over_a_pool():
    recs = [_rec("a", [_cand("g1"), _cand("s1", "sample"), _cand("s2", "sample")]),
            _rec("b", [_cand("g2"), _cand("t1", "sample")])]
    assert rerank.greedy_outputs(recs) == ["g1", "g2"]
    sampled = rerank.random_outputs(recs, seed=3)
    assert sampled[0] in ("s1", "s2") and sampled[1] == "t1"
    assert rerank.random_outputs(recs[::-1], seed=3)[::-1] == sampled  # order-free draws
    with pytest.raises(ValueError, match="'a'.*generator 'gpt'"):
        rerank.greedy_outputs(recs, generator="gpt")


def test_oracle_beats_greedy_on_real_e2e_references(data_dir):
    # The pool: two other MRs' references, then one of this MR's own (which the oracle finds).
    recs = list(itertools.islice(import_e2e(data_dir, "test"), 12))
    n = len(recs)
    pool = [_rec(r["id"], [_cand(recs[(i + d) % n]["references"][0]) for d in (1, 2)]
                 + [_cand(r["references"][0])], r["references"]) for i, r in enumerate(recs)]
    refs = [[r["references"][k] if k < len(r["references"]) else None for r in recs]
            for k in range(max(len(r["references"]) for r in recs))]
    oracle = rerank.oracle_outputs(pool, "chrf", progress=False)
    greedy = rerank.greedy_outputs(pool)
    assert oracle == [r["references"][0] for r in recs]
    assert metrics.chrf(oracle, refs) > metrics.chrf(greedy, refs)


@pytest.mark.slow
def test_wmt_pool_figures_match_the_published_ones(data_dir):
    """chrF vs reference A: best single system, MBR (chrF utility) and oracle over each pool."""
    want = {"wmt22": (64.64, 65.20, 71.28), "wmt23": (71.82, 70.35, 74.60)}
    for year, (best, mbr, oracle) in want.items():
        recs = list(import_wmt(data_dir, year))
        ref_a = [[r["references"][0] for r in recs]]
        systems = rerank.generator_outputs(recs)
        assert len(systems) == len(recs[0]["candidates"])
        best_got = max(metrics.chrf(out, ref_a) for out in systems.values())
        mbr_got = metrics.chrf(rerank.mbr_outputs(recs, "chrf", progress=False), ref_a)
        oracle_got = metrics.chrf(rerank.oracle_outputs(recs, "chrf", max_references=1,
                                                        progress=False), ref_a)
        assert best_got == pytest.approx(best, abs=0.01), year
        assert mbr_got == pytest.approx(mbr, abs=0.01), year
        assert oracle_got == pytest.approx(oracle, abs=0.01), year
