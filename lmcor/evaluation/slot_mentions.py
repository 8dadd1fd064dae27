"""E2E: which of an MR's values each row's outputs name, the slot errors BLEU hides.

A corrector that writes one fluent sentence and leaves the food out loses little BLEU per
output but fails the task. For the attributes an output names in so many words (name, eatType,
food, near, area) a literal, case-insensitive match tells whether it is named; price range,
customer rating and family-friendliness are paraphrased too freely to count this way. The
first reference is scored alike, as the human rate: a reference that writes "British" for
food[English] counts as leaving it out, in every row the same.

`lmcor evaluate` writes the shares to results.json ("slot_mentions") and results.md for E2E.
"""
import re
from typing import Dict, List, Mapping, Optional, Sequence

from lmcor.data.slot_values import parse_mr
from lmcor.evaluation import breakdowns

SLOTS = ("name", "eatType", "food", "near", "area")
DATASETS = ("e2e",)
REFERENCE_ROW = "reference"
# area's two values, written many ways: "by the river", "in the centre of the city".
_AREA = {"riverside": re.compile(r"\briver"), "city centre": re.compile(r"\bcent(?:re|er)\b")}


def named(slot: str, value: str, text: str) -> bool:
    """Whether `text` names the MR's `value` of `slot`."""
    low = text.lower()
    if slot == "area" and value.lower() in _AREA:
        return _AREA[value.lower()].search(low) is not None
    return value.lower() in low


def _checked(source: str) -> Dict[str, List[str]]:
    """slot -> its values in the MR (a few test MRs give one slot two values)."""
    out: Dict[str, List[str]] = {}
    for slot, value in parse_mr(source):
        if slot in SLOTS and value:
            out.setdefault(slot, []).append(value)
    return out


def mentions(records: Sequence[Mapping], references: Sequence[str],
             outputs: Mapping[str, Sequence[str]]) -> dict:
    """{"slots": [(slot, MRs holding it)], "rates": {row: {slot: share, "all": share}},
    "groups": [{"label", "examples"}], "all_by_group": {row: {label: share}}}: per row, the
    share of the MRs holding each slot whose output names its value, and of all MRs whose
    output names every checked value, overall and by number of attributes."""
    checked = [_checked(r["source"]) for r in records]
    holding = {slot: sum(slot in c for c in checked) for slot in SLOTS}
    slots = [slot for slot in SLOTS if holding[slot]]
    _, parts = breakdowns.groups("e2e_attributes", records)
    rates, by_group = {}, {}
    for row, texts in {REFERENCE_ROW: references, **outputs}.items():
        hits = {slot: 0 for slot in slots}
        complete = []
        for values, text in zip(checked, texts):
            found = {slot: all(named(slot, v, text) for v in vals) for slot, vals in values.items()}
            for slot, ok in found.items():
                hits[slot] += ok
            complete.append(all(found.values()))
        rates[row] = {slot: hits[slot] / holding[slot] for slot in slots}
        rates[row]["all"] = sum(complete) / len(complete)
        by_group[row] = {label: sum(complete[i] for i in idx) / len(idx) for label, idx in parts}
    return {"slots": [[slot, holding[slot]] for slot in slots], "rates": rates,
            "groups": [{"label": label, "examples": len(idx)} for label, idx in parts],
            "all_by_group": by_group}


def markdown(table: Optional[Mapping]) -> str:
    if not table:
        return ""
    slots = [slot for slot, _ in table["slots"]]
    head = [f"{slot} ({n})" for slot, n in table["slots"]] + ["all"]
    lines = ["Values named in the outputs (literal match; share of the MRs holding each "
             "attribute, and of all MRs with every one named):", "",
             "| row | " + " | ".join(head) + " |", "|" + "---|" * (len(head) + 1)]
    for row, rates in table["rates"].items():
        lines.append(f"| {row} | " + " | ".join(f"{rates[k]:.2f}" for k in [*slots, "all"])
                     + " |")
    groups = [f"{g['label']} ({g['examples']})" for g in table["groups"]]
    lines += ["", "MRs with every one named, by attributes:", "",
              "| attributes (inputs) | " + " | ".join(groups) + " |",
              "|" + "---|" * (len(groups) + 1)]
    for row, shares in table["all_by_group"].items():
        lines.append(f"| {row} | " + " | ".join(f"{shares[g['label']]:.2f}"
                                                for g in table["groups"]) + " |")
    return "\n".join(lines) + "\n"


def for_dataset(dataset: str, records, references, outputs) -> Optional[Dict]:
    """`mentions` for the datasets whose sources are slot-value MRs, else None."""
    return mentions(records, references, outputs) if dataset in DATASETS else None
