"""The main metric per group of test inputs (E2E by number of attributes), on real data."""
import collections
import os

import pytest

from lmcor import metrics
from lmcor.evaluation import breakdowns, evaluate, inputs, slot_mentions
from lmcor.data.importers import import_e2e

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV_POOL = os.path.join(REPO, "data", "pools", "e2e_dev_e2e_attributes.jsonl.gz")


def test_e2e_test_mrs_by_number_of_attributes(data_dir):
    counts = collections.Counter(breakdowns.e2e_attributes(r)
                                 for r in import_e2e(str(data_dir), "test"))
    # The cleaned test set's 1,847 MRs by number of attributes in their `mr` column.
    assert counts == {"2–4": 236, "5": 293, "6": 407, "7": 554, "8–10": 357}
    assert breakdowns.e2e_attributes({"source": "name[A], eatType[pub], food[Thai], "
                                                "area[riverside], near[The Bakers]"}) == "5"


def test_evaluate_scores_every_row_on_each_group(tmp_path):
    cfg = evaluate.evaluation(task="e2e", out_dir=str(tmp_path), pool=DEV_POOL, max_examples=80,
                              bootstrap_samples=50)
    results = evaluate.evaluate(cfg)
    bd = results["breakdown"]
    assert bd["by"] == "attributes" and sum(g["examples"] for g in bd["groups"]) == 80
    records = inputs.load_records(cfg)
    refs = inputs.reference_streams(records, None)
    for row in results["rows"]:
        hyps = open(tmp_path / row["predictions"], encoding="utf-8").read().splitlines()
        for group in bd["groups"]:
            idx = [i for i, r in enumerate(records)
                   if breakdowns.e2e_attributes(r) == group["label"]]
            want = metrics.bleu([hyps[i] for i in idx], [[s[i] for i in idx] for s in refs])
            assert bd["scores"][row["name"]][group["label"]] == pytest.approx(want)
    table = (tmp_path / "results.md").read_text()
    assert "BLEU by attributes:" in table and "| LLM greedy |" in table.split("by attributes")[1]
    named = results["slot_mentions"]
    assert list(named["rates"]) == ["reference"] + [row["name"] for row in results["rows"]]
    assert "| reference |" in table.split("Values named in the outputs")[1]
    with pytest.raises(ValueError, match="breakdown"):
        evaluate.evaluation(task="e2e", out_dir=str(tmp_path), breakdown="by_color")


def test_slot_mentions_count_each_mr_value_an_output_names():
    records = [{"source": "name[The Eagle], eatType[pub], food[Italian], area[riverside], "
                          "priceRange[cheap]"},
               {"source": "name[Alimentum], food[Fast food], near[Burger King], "
                          "area[city centre]"}]
    references = ["The Eagle is a cheap Italian pub by the river.",
                  "Alimentum, near Burger King in the city centre, serves fast food."]
    outputs = {"short": ["The Eagle is a pub on the riverside.",
                         "Alimentum serves fast food in the center, near Burger King."],
               "wrong": ["Eagles are pubs.", "The Alimentum sells Fast Food."]}
    table = slot_mentions.mentions(records, references, outputs)
    # Holding: name 2, eatType 1, food 2, near 1, area 2 (the price range is not counted).
    assert table["slots"] == [["name", 2], ["eatType", 1], ["food", 2], ["near", 1], ["area", 2]]
    assert table["rates"]["reference"] == {"name": 1, "eatType": 1, "food": 1, "near": 1,
                                           "area": 1, "all": 1}
    # "short" leaves Italian out of the first output; "center" names the city centre.
    assert table["rates"]["short"] == {"name": 1, "eatType": 1, "food": 0.5, "near": 1,
                                       "area": 1, "all": 0.5}
    # "Eagles" is not "The Eagle"; the second names its name and food (any case) only.
    assert table["rates"]["wrong"] == {"name": 0.5, "eatType": 1, "food": 0.5, "near": 0,
                                       "area": 0, "all": 0}
    assert table["groups"] == [{"label": "2–4", "examples": 1}, {"label": "5", "examples": 1}]
    assert table["all_by_group"]["short"] == {"2–4": 1, "5": 0}
    assert slot_mentions.for_dataset("wmt", records, references, outputs) is None


def test_wmt_paragraphs_by_source_words_cover_the_test_half_at_its_edges():
    def record(n):
        return {"source": " ".join(["w"] * n)}
    assert [breakdowns.source_words(record(n)) for n in (1, 25, 26, 50, 51, 100, 101, 447)] == [
        "≤ 25", "≤ 25", "26–50", "26–50", "51–100", "51–100", "> 100", "> 100"]
    assert breakdowns.DEFAULT_BY_DATASET[inputs.task_dataset("wmt_lmcor")] == "source_words"


def test_closest_candidates_count_copies_and_the_nearest_system_of_each_output():
    def cand(text, gen):
        return {"text": text, "generator": gen, "decoding": "greedy"}
    records = [{"candidates": [cand("the cat sat on the mat", "A"), cand("a dog ran home", "B")]},
               {"candidates": [cand("green trees grow tall", "A"), cand("blue sea waves", "B")]},
               {"candidates": []}]
    outputs = {"LMCor": ["the cat sat on the mat", "blue sea waves roll", "anything"],
               "loop": ["the cat sat on the mat the cat sat on the mat the",
                        "blue sea waves blue sea waves blue sea waves", ""]}
    got = breakdowns.closest_candidates(records, outputs)
    # One verbatim copy (of A), one rewrite nearest B; the record without candidates is skipped.
    assert got["LMCor"] == {"copies": 1, "runaway": 0, "closest": {"A": 1, "B": 1}}
    # 13 words against a longest candidate of 6 runs away; 9 against 4 does too.
    assert got["loop"]["runaway"] == 2
    table = breakdowns.closest_markdown(got)
    assert "| LMCor | 1 | 0 | 1 | 1 |" in table
    assert "| r | 0 | — |" in breakdowns.closest_markdown(
        {"r": {"copies": 0, "closest": {"A": 1}}})
    # One generator: candidates are told apart by their decoding.
    one = [{"candidates": [cand("x y z", "g"), dict(cand("p q r", "g"), decoding="sample")]}]
    assert breakdowns.closest_candidates(one, {"r": ["p q r s"]})["r"]["closest"] == {"sample": 1}
