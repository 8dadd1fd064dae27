"""Few-shot prompts: named templates per task, demonstration selection, output clean-up.

A prompt is an optional instruction followed by `num_shots` demonstrations (source and its first
reference) and the query, all in one template. Demonstrations come from a task's training split
and are chosen `fixed` (the same for every query), `random` (per query) or by `bm25` similarity.
Every random choice is keyed by (seed, example id), so a prompt never depends on batching, host
count or whether the job was resumed.
"""
import dataclasses
import hashlib
import random
import re
from typing import Dict, List, Optional, Sequence, Tuple

import gin

SELECTIONS = ("fixed", "random", "bm25")


@dataclasses.dataclass(frozen=True)
class Template:
    """How one demonstration and the query are laid out."""

    name: str
    task: str
    input_prefix: str
    output_prefix: str
    instruction: str = ""
    separator: str = "\n\n"

    def demonstration(self, source: str, target: str) -> str:
        return f"{self.input_prefix} {source}\n{self.output_prefix} {target}"

    def query(self, source: str) -> str:
        # No trailing space: models tokenize " word" as one piece, so the space belongs to them.
        return f"{self.input_prefix} {source}\n{self.output_prefix}"

    def stop_sequences(self) -> Tuple[str, ...]:
        """Markers that open the next demonstration; generation past them is the model rambling."""
        stops = [f"\n{self.input_prefix}", f"\n{self.output_prefix}"]
        if self.separator.strip() == "" and "\n" in self.separator:
            stops.append(self.separator)
        return tuple(stops)


_VARIANTS = [
    # E2E: meaning representation -> restaurant description.
    Template("e2e_attributes", "e2e", "Attributes:", "Sentence:",
             "Write one or two fluent sentences that describe the restaurant using all of "
             "its attributes."),
    Template("e2e_mr", "e2e", "MR:", "Text:"),
    Template("e2e_io", "e2e", "Input:", "Output:",
             "Turn the meaning representation into a natural restaurant description."),
    # JFLEG: correct grammar and fluency, keep the meaning.
    Template("jfleg_corrected", "jfleg", "Original:", "Corrected:",
             "Correct the grammatical and spelling errors in the sentence."),
    Template("jfleg_io", "jfleg", "Input:", "Output:"),
    Template("jfleg_fluent", "jfleg", "Sentence:", "Fluent rewrite:",
             "Rewrite the sentence so that it is fluent, grammatical English with the same "
             "meaning."),
    # WMT en->de.
    Template("wmt_en_de", "wmt", "English:", "German:",
             "Translate the English text into German."),
    Template("wmt_en_de_plain", "wmt", "EN:", "DE:"),
    Template("wmt_en_de_io", "wmt", "Source (English):", "Translation (German):"),
]
VARIANTS: Dict[str, Template] = {t.name: t for t in _VARIANTS}


def get_template(name: str) -> Template:
    if name not in VARIANTS:
        raise ValueError(f"unknown prompt variant {name!r}; known variants: "
                         f"{', '.join(sorted(VARIANTS))}")
    return VARIANTS[name]


def keyed_seed(seed: int, *parts: str) -> int:
    """A 63-bit seed derived from the run seed and e.g. an example id (stable across runs)."""
    key = "\x1f".join([str(seed), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PromptConfig:
    variant: str = "e2e_attributes"
    num_shots: int = 5
    selection: str = "fixed"
    seed: int = 0

    def __post_init__(self):
        get_template(self.variant)
        if self.selection not in SELECTIONS:
            raise ValueError(f"PromptConfig.selection={self.selection!r}; choose one of "
                             f"{', '.join(SELECTIONS)}")
        if self.num_shots < 0:
            raise ValueError(f"PromptConfig.num_shots={self.num_shots} must be >= 0")


def _words(text: str) -> List[str]:
    return re.findall(r"\w+", text.lower())


class PromptBuilder:
    """Builds prompts for query records from a pool of demonstration records."""

    def __init__(self, config: PromptConfig, demos: Sequence[dict]):
        self.config = config
        self.template = get_template(config.variant)
        self.demos = [d for d in demos if d.get("references")]
        if len(self.demos) < config.num_shots + 1 and config.num_shots:
            # +1: a query drawn from the demo split must never see itself as a demonstration.
            raise ValueError(f"prompt variant {config.variant!r} needs {config.num_shots} "
                             f"demonstrations but the training split has only {len(self.demos)} "
                             "examples with references")
        self._order = list(range(len(self.demos)))
        random.Random(keyed_seed(config.seed, "fixed")).shuffle(self._order)
        self._index = None
        if config.selection == "bm25" and config.num_shots:
            import bm25s  # noqa: PLC0415 — only this selection needs it

            self._index = bm25s.BM25()
            self._index.index([_words(d["source"]) or ["<empty>"] for d in self.demos],
                              show_progress=False)

    def select(self, queries: Sequence[dict]) -> List[List[dict]]:
        """Demonstrations for each query, never the query's own source."""
        k = self.config.num_shots
        if k == 0:
            return [[] for _ in queries]
        if self.config.selection == "bm25":
            return self._select_bm25(queries)
        picks = []
        for q in queries:
            order = self._order
            if self.config.selection == "random":
                order = list(range(len(self.demos)))
                random.Random(keyed_seed(self.config.seed, "random", q["id"])).shuffle(order)
            picks.append(self._first_k(order, q["source"]))
        return picks

    def _first_k(self, order: Sequence[int], source: str) -> List[dict]:
        out = [self.demos[i] for i in order if self.demos[i]["source"] != source]
        return out[: self.config.num_shots]

    def _select_bm25(self, queries: Sequence[dict]) -> List[List[dict]]:
        k = min(self.config.num_shots + 1, len(self.demos))
        docs, _ = self._index.retrieve([_words(q["source"]) or ["<empty>"] for q in queries],
                                       k=k, show_progress=False)
        picks = []
        for q, row in zip(queries, docs):
            chosen = self._first_k([int(i) for i in row], q["source"])
            # Most similar last, right before the query, where it influences the model most.
            picks.append(chosen[::-1])
        return picks

    def build(self, queries: Sequence[dict]) -> List[dict]:
        """For each query: {"prompt": str, "messages": [chat turns], "shot_ids": [...]}."""
        t = self.template
        out = []
        for q, shots in zip(queries, self.select(queries)):
            parts = [t.instruction] if t.instruction else []
            parts += [t.demonstration(d["source"], d["references"][0]) for d in shots]
            parts.append(t.query(q["source"]))
            out.append({"prompt": t.separator.join(parts),
                        "messages": self._messages(q, shots),
                        "shot_ids": [d["id"] for d in shots]})
        return out

    def _messages(self, query: dict, shots: Sequence[dict]) -> List[dict]:
        t = self.template
        msgs = [{"role": "system", "content": t.instruction}] if t.instruction else []
        for d in shots:
            msgs.append({"role": "user", "content": f"{t.input_prefix} {d['source']}"})
            msgs.append({"role": "assistant", "content": d["references"][0]})
        msgs.append({"role": "user", "content": f"{t.input_prefix} {query['source']}"})
        return msgs

    def stop_sequences(self, extra: Sequence[str] = ()) -> Tuple[str, ...]:
        return tuple(dict.fromkeys((*self.template.stop_sequences(), *extra)))

    def postprocess(self, text: str, extra_stops: Sequence[str] = ()) -> str:
        """Cuts at the next demonstration marker and trims; a chat model may also echo the
        output prefix, which is dropped."""
        return postprocess(self.template, text, extra_stops)


def postprocess(template: Template, text: str, extra_stops: Sequence[str] = ()) -> str:
    cut = len(text)
    for stop in (*template.stop_sequences(), *extra_stops):
        pos = text.find(stop)
        if stop and pos >= 0:
            cut = min(cut, pos)
    text = text[:cut].strip()
    if text.startswith(template.output_prefix):
        text = text[len(template.output_prefix):].strip()
    return text


def prompt_summary(config: PromptConfig, stops: Optional[Sequence[str]] = None) -> dict:
    """What the manifest records about the prompt."""
    t = get_template(config.variant)
    return {**dataclasses.asdict(config), "template": dataclasses.asdict(t),
            "stop_sequences": list(stops if stops is not None else t.stop_sequences())}
