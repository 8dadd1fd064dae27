"""The pool record schema: what one JSONL line of a pool must hold, checked field by field.

docs/pool_format.md documents the schema; `validate_record` is its executable form. Every error
is a PoolError whose message names where (file and line, or record number) and the field's
dotted path (e.g. "candidates[2].decoding").
"""
import math
from typing import Any, Dict, NoReturn, Sequence

DECODINGS = ("greedy", "sample")
_RECORD_KEYS = {"id", "source", "references", "candidates", "meta"}
_CANDIDATE_KEYS = {"text", "generator", "prompt_id", "decoding", "temperature", "logprob"}


class PoolError(ValueError):
    """A pool file or record breaks the schema; the message names file, line and field."""


def fail(where: str, field: str, problem: str) -> NoReturn:
    raise PoolError(f"{where}: field {field!r}: {problem}")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_str(value: Any, where: str, field: str, allow_empty: bool = True) -> None:
    if not isinstance(value, str):
        fail(where, field, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value:
        fail(where, field, "must not be empty")


def _validate_candidate(cand: Any, where: str, field: str) -> None:
    if not isinstance(cand, dict):
        fail(where, field, f"expected an object, got {type(cand).__name__}")
    unknown = sorted(set(cand) - _CANDIDATE_KEYS)
    if unknown:
        fail(where, f"{field}.{unknown[0]}", "unknown field (candidate fields: "
             + ", ".join(sorted(_CANDIDATE_KEYS)) + ")")
    for key in ("text", "generator", "decoding", "temperature"):
        if key not in cand:
            fail(where, f"{field}.{key}", "missing required field")
    _check_str(cand["text"], where, f"{field}.text")  # empty text is legal: counted, not dropped
    _check_str(cand["generator"], where, f"{field}.generator", allow_empty=False)
    if cand["decoding"] not in DECODINGS:
        fail(where, f"{field}.decoding",
             f"must be one of {list(DECODINGS)}, got {cand['decoding']!r}")
    if not _is_number(cand["temperature"]) or cand["temperature"] < 0:
        fail(where, f"{field}.temperature",
             f"expected a finite number >= 0, got {cand['temperature']!r}")
    if cand.get("prompt_id") is not None:
        _check_str(cand["prompt_id"], where, f"{field}.prompt_id")
    if cand.get("logprob") is not None and not _is_number(cand["logprob"]):
        fail(where, f"{field}.logprob",
             f"expected a finite number or null, got {cand['logprob']!r}")


def validate_record(rec: Any, where: str) -> Dict[str, Any]:
    """Check `rec` against the pool schema; return it with optional fields filled in.

    `where` (e.g. "pool-00000.jsonl:17") prefixes every error. Raises PoolError on the first
    problem, naming the offending field (dotted path, e.g. "candidates[2].decoding").
    """
    if not isinstance(rec, dict):
        fail(where, "<record>", f"expected a JSON object, got {type(rec).__name__}")
    unknown = sorted(set(rec) - _RECORD_KEYS)
    if unknown:
        fail(where, unknown[0], "unknown field (put extra information under 'meta')")
    for key in ("id", "source", "references", "candidates"):
        if key not in rec:
            fail(where, key, "missing required field")
    _check_str(rec["id"], where, "id", allow_empty=False)
    _check_str(rec["source"], where, "source")
    refs = rec["references"]
    if not isinstance(refs, list) or not refs:
        fail(where, "references", "expected a non-empty list of strings")
    for i, ref in enumerate(refs):
        _check_str(ref, where, f"references[{i}]")
    if not isinstance(rec["candidates"], list):
        fail(where, "candidates", f"expected a list, got {type(rec['candidates']).__name__}")
    for i, cand in enumerate(rec["candidates"]):
        _validate_candidate(cand, where, f"candidates[{i}]")
    if not isinstance(rec.get("meta", {}), dict):
        fail(where, "meta", f"expected an object, got {type(rec['meta']).__name__}")
    return _normalized(rec)


def _normalized(rec: Dict[str, Any]) -> Dict[str, Any]:
    cands = [{"text": c["text"], "generator": c["generator"], "prompt_id": c.get("prompt_id"),
              "decoding": c["decoding"], "temperature": float(c["temperature"]),
              "logprob": None if c.get("logprob") is None else float(c["logprob"])}
             for c in rec["candidates"]]
    return {"id": rec["id"], "source": rec["source"], "references": list(rec["references"]),
            "candidates": cands, "meta": dict(rec.get("meta") or {})}


def pool_record(source: str, candidates: Sequence[Any], example_id: str = "request") -> dict:
    """A pool-format record from a source and candidates (texts or pool candidate dicts);
    bare texts count as greedy first, then samples, as the sampling job orders them."""
    cands = []
    for i, c in enumerate(candidates):
        if isinstance(c, str):
            c = {"text": c, "generator": "unknown", "prompt_id": None,
                 "decoding": "greedy" if i == 0 else "sample", "temperature": 0.0,
                 "logprob": None}
        cands.append(c)
    return {"id": example_id, "source": source, "references": [], "candidates": cands, "meta": {}}
