"""The markdown table of one evaluation (results.json -> results.md), as `lmcor evaluate`
prints it and `lmcor report` and the README embed it."""
from typing import Mapping

from lmcor.evaluation import breakdowns, slot_mentions

METRIC_LABELS = {"bleu": "BLEU", "chrf": "chrF", "rougeL": "ROUGE-L", "gleu": "GLEU", "ter": "TER"}
# Every other row is tested against this one; its own Δ and p are left blank.
GREEDY_ROW = "LLM greedy"


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def markdown_table(results: Mapping) -> str:
    """Row name, the main metric, then the others; each with its 95% interval; the paired test
    of the main metric against LLM greedy; for trained rows, the training examples seen and
    the training wall time. Paired tests between trained rows follow the table."""
    names = results["metrics"]
    trained = any(row.get("training") for row in results["rows"])
    head = ["row"]
    for name in names:
        head += [METRIC_LABELS[name], "95% CI"]
    head += [f"Δ {METRIC_LABELS[names[0]]} vs greedy", "p"]
    # Tables written before lengths were recorded render as they always did.
    lengths = all(row.get("length", {}).get("vs_reference") is not None
                  for row in results["rows"])
    head += ["words / ref"] if lengths else []
    head += ["examples seen", "training time"] if trained else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results["rows"]:
        cells = [row["name"]]
        for name in names:
            m = row["metrics"][name]
            cells += [f"{m['score']:.2f}", f"[{m['low']:.2f}, {m['high']:.2f}]"]
        main = row["metrics"][names[0]]
        same = row["name"] == GREEDY_ROW
        cells += ["—" if same else f"{main['delta']:+.2f}", "—" if same else f"{main['p_value']:.3f}"]
        cells += [f"{row['length']['vs_reference']:.2f}"] if lengths else []
        if trained:
            t = row.get("training")
            cells += ([f"{t['examples_seen']:,}", _duration(t["train_seconds"])] if t
                      else ["", ""])
        lines.append("| " + " | ".join(cells) + " |")
    for c in results.get("comparisons", []):
        label = METRIC_LABELS[c["metric"]]
        lines.append(f"\n{c['row']} against {c['against']}: Δ {label} {c['delta']:+.2f}, "
                     f"paired bootstrap p = {c['p_value']:.3f}")
    by_group = breakdowns.markdown(results.get("breakdown"), METRIC_LABELS[names[0]])
    closest = breakdowns.closest_markdown(results.get("closest_candidates"))
    named = slot_mentions.markdown(results.get("slot_mentions"))
    return "\n".join(lines) + "\n" + "".join(f"\n{part}" for part in (by_group, closest, named)
                                             if part)
