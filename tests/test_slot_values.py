"""Slot-value substitution (lmcor.data.slot_values) and E2E's swapped training and validation."""
import collections

import gin

from lmcor.data import slot_values as sv


def test_parse_mr_reads_slots_with_spaces_and_symbols():
    assert sv.parse_mr("name[The Eagle], customer rating[3 out of 5], priceRange[£20-25]") == \
        [("name", "The Eagle"), ("customer rating", "3 out of 5"), ("priceRange", "£20-25")]


def test_substitute_whole_words_once_with_the_text_case():
    swaps = {"Chinese": "Fast food", "Burger King": "Express by Holiday Inn", "pub": "coffee shop",
             "coffee shop": "pub"}
    text = ("The Eagle is a pub serving Chinese food near Burger King. chinese food, public "
            "house. Coffee shop near burger king.")
    assert sv.substitute(text, swaps) == (
        "The Eagle is a coffee shop serving fast food near Express by Holiday Inn. Fast food, "
        "public house. Pub near Express by Holiday Inn.")
    assert sv.substitute("It serves fast food.", {"Fast food": "Italian"}) == \
        "It serves Italian food."
    assert sv.substitute("unchanged", {}) == "unchanged"


def _record():
    return {"id": "r1", "source": "name[Cotto], eatType[pub], food[Chinese], near[Ranch]",
            "references": ["Cotto is a pub near Ranch serving Chinese food.", "Cotto, a pub."],
            "peer_references": ["Near Ranch, Cotto serves Chinese food."],
            "candidates": [{"text": "Cotto is a Chinese pub.", "generator": "g",
                            "decoding": "greedy"}],
            "meta": {"split": "dev"}}


VALUES = {"name": ["Cotto", "Zizzi", "Ranch"], "eatType": ["pub", "restaurant"],
          "food": ["Chinese", "Italian"], "near": ["Ranch", "Burger King"]}


def test_swap_record_is_consistent_everywhere_and_seeded():
    rec = _record()
    out = sv.swap_record(rec, VALUES, 1.0, "s")
    # Every slot took another value, never one the MR already holds (name cannot become Ranch).
    assert out["source"] == "name[Zizzi], eatType[restaurant], food[Italian], near[Burger King]"
    assert out["references"] == ["Zizzi is a restaurant near Burger King serving Italian food.",
                                 "Zizzi, a restaurant."]
    assert out["peer_references"] == ["Near Burger King, Zizzi serves Italian food."]
    assert out["candidates"][0] == {"text": "Zizzi is a Italian restaurant.", "generator": "g",
                                    "decoding": "greedy"}
    assert out["meta"] == {"split": "dev", "swapped_values": {
        "Cotto": "Zizzi", "pub": "restaurant", "Chinese": "Italian", "Ranch": "Burger King"}}
    assert rec == _record()  # the input is not modified
    assert sv.swap_record(rec, VALUES, 0.0, "s") == rec
    draws = [sv.swap_record({**rec, "id": f"r{i}"}, VALUES, 0.5, "s")["source"]
             for i in range(200)]
    assert draws == [sv.swap_record({**rec, "id": f"r{i}"}, VALUES, 0.5, "s")["source"]
                     for i in range(200)]
    kept = sum("food[Chinese]" in d for d in draws)
    assert 70 < kept < 130  # about half the records keep their food


def test_e2e_training_and_validation_swaps_spread_the_rare_values():
    """On the released dev pool, food is Chinese or English in nearly every MR; swapped, the
    training split holds each of the 7 foods often and the swapped hold-out differs from the
    plain one in every name, eatType, food and near."""
    from lmcor.tasks import e2e

    def foods(records):
        return collections.Counter(dict(sv.parse_mr(r["source"])).get("food") for r in records)

    gin.bind_parameter("pool_overrides.by_dataset",
                       {"e2e": {"dev": "data/pools/e2e_dev_e2e_attributes.jsonl.gz"}})
    try:
        plain = foods(e2e.train_records())
        with gin.unlock_config():
            gin.bind_parameter("value_swap.rate", 0.5)
        swapped = foods(e2e.train_records())
        held = list(e2e.validation_records())
        held_swapped = list(e2e.validation_swapped_records())
    finally:
        gin.bind_parameter("pool_overrides.by_dataset", None)
        gin.bind_parameter("value_swap.rate", 0.0)
    rare = ("Fast food", "French", "Indian", "Italian", "Japanese")
    assert sum(plain[f] for f in rare) < 15 and all(swapped[f] > 50 for f in rare)
    assert sum(plain.values()) == sum(swapped.values())
    assert [r["id"] for r in held] == [r["id"] for r in held_swapped]
    for a, b in zip(held, held_swapped):
        old, new = sv.parse_mr(a["source"]), sv.parse_mr(b["source"])
        assert [s for s, _ in old] == [s for s, _ in new]
        # A slot's first value always changes (a second one, as in "eatType[coffee shop],
        # eatType[restaurant]", may find no value left that the MR does not hold).
        firsts = {s: i for i, (s, _) in reversed(list(enumerate(old)))}
        for i, ((slot, was), (_, now)) in enumerate(zip(old, new)):
            assert (was != now) if slot in sv.SWAP_SLOTS and firsts[slot] == i else \
                (slot in sv.SWAP_SLOTS or was == now)
        assert len(a["references"]) == len(b["references"])
