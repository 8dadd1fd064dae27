"""Slot-value substitution for data-to-text records whose source is `slot[value], slot[value]`.

A corrector trained on E2E's dev split sees one slot value over and over (food is Chinese or
English in 1,056 of its 1,066 food MRs; the eatType "pub" occurs 3 times), while the test set
spreads them evenly. It learns to write the values it saw rather than to copy the MR's, and on
test it drops the rare ones. Swapping a slot's value for another of the same slot, in the source
and consistently in every reference and candidate, shows it each value as often as the others.

`swap_record` is the one transform; a task applies it to its training records (augmentation)
and to a copy of its validation records (a validation that holds the rare values).
"""
import random
import re
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

import gin

# E2E's slots whose values the dev split barely varies (the name and near values of test are
# half unseen too); the others take few values, all well covered.
SWAP_SLOTS = ("name", "eatType", "food", "near")
_SLOT = re.compile(r"([^,\[\]]+?)\[([^\]]*)\]")


def parse_mr(source: str) -> List[Tuple[str, str]]:
    """`name[The Eagle], food[Chinese]` -> [("name", "The Eagle"), ("food", "Chinese")]."""
    return [(slot.strip(), value) for slot, value in _SLOT.findall(source)]


def inventory(records: Iterable[Mapping[str, Any]], slots: Sequence[str]) -> Dict[str, List[str]]:
    """Each slot's distinct values over `records`, sorted (so draws do not depend on order)."""
    seen: Dict[str, set] = {slot: set() for slot in slots}
    for rec in records:
        for slot, value in parse_mr(rec["source"]):
            if slot in seen and value:
                seen[slot].add(value)
    return {slot: sorted(values) for slot, values in seen.items()}


def _surface(new: str, sentence_start: bool) -> str:
    # Proper names ("Burger King", "Italian") keep their capitals. Other values are written in
    # lower case ("fast food", "coffee shop"), capitalised at a sentence start.
    words = new.split()
    if words[0][0].isupper() and (len(words) == 1 or any(w[0].isupper() for w in words[1:])):
        return new
    return (new[0].upper() if sentence_start else new[0].lower()) + new[1:]


_SENTENCE_START = re.compile(r"(^|[.!?]\s*)$")
_NEXT_WORD = re.compile(r"\s+(\w+)")


def substitute(text: str, mapping: Mapping[str, str]) -> str:
    """`text` with every whole-word, case-insensitive mention of a key replaced by its value,
    in one pass (so a value that is also another key is not replaced again)."""
    if not mapping:
        return text
    keys = sorted(mapping, key=len, reverse=True)  # "The Golden Curry" before "The Golden"
    lower = {k.lower(): v for k, v in mapping.items()}
    pattern = re.compile(r"(?<!\w)(" + "|".join(re.escape(k) for k in keys) + r")(?!\w)",
                         re.IGNORECASE)
    out, pos = [], 0
    for m in pattern.finditer(text):
        if m.start() < pos:  # inside a word already dropped below
            continue
        old = m.group(0)
        new = _surface(lower[old.lower()], bool(_SENTENCE_START.search(text[:m.start()])))
        out.append(text[pos:m.start()])
        pos = m.end()
        following = _NEXT_WORD.match(text, pos)
        # "Chinese food" -> "Fast food", not "Fast food food"; "serves fast food" -> "serves
        # Italian food", not "serves Italian".
        if following and following.group(1).lower() == new.split()[-1].lower():
            pos = following.end()
        elif old.lower().endswith(" food") and not new.lower().endswith("food"):
            new += " food"
        out.append(new)
    out.append(text[pos:])
    return "".join(out)


def draw_swaps(source: str, values: Mapping[str, Sequence[str]], rate: float,
               rng: random.Random) -> Dict[str, str]:
    """old value -> new value for each slot of `source` in `values`, each with probability
    `rate`. The new value is another of the slot's values, never one the MR already holds."""
    pairs = parse_mr(source)
    held = {v.lower() for _, v in pairs}
    swaps: Dict[str, str] = {}
    for slot, value in pairs:
        options = [v for v in values.get(slot, ()) if v.lower() not in held]
        if value and options and rng.random() < rate:
            swaps[value] = rng.choice(options)
            held.add(swaps[value].lower())
    return swaps


def swap_record(record: Mapping[str, Any], values: Mapping[str, Sequence[str]], rate: float,
                seed: str) -> Dict[str, Any]:
    """`record` with slot values swapped (see module doc) in its source, references, peer
    references and candidate texts. Seeded by `seed` and the record id, so a record draws the
    same swap in every epoch and every process."""
    rng = random.Random(f"{seed}:{record['id']}")
    swaps = draw_swaps(record["source"], values, rate, rng)
    if not swaps:
        return dict(record)
    source = _SLOT.sub(lambda m: f"{m.group(1)}[{swaps.get(m.group(2), m.group(2))}]",
                       record["source"])
    out = {**record, "source": source,
           "references": [substitute(r, swaps) for r in record["references"]],
           "candidates": [{**c, "text": substitute(c["text"], swaps)}
                          for c in record["candidates"]]}
    if "peer_references" in record:
        out["peer_references"] = [substitute(r, swaps) for r in record["peer_references"]]
    meta = dict(record.get("meta") or {})
    meta["swapped_values"] = swaps
    out["meta"] = meta
    return out


@gin.configurable
def value_swap(rate: float = 0.0, slots: Sequence[str] = SWAP_SLOTS, seed: int = 0):
    """Training augmentation (a task reads it for its training records): each of `slots` in a
    training MR takes another value of that slot, drawn uniformly from the training split's
    values, with probability `rate` -> (rate, slots, seed)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"value_swap.rate={rate}; expected a probability in [0, 1]")
    return rate, tuple(slots), seed
