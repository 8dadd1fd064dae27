"""Small hand-written pool records for corrector-input and preprocessor tests."""


def cand(text, decoding="sample", generator="llm"):
    return {"text": text, "generator": generator, "prompt_id": None, "decoding": decoding,
            "temperature": 0.0 if decoding == "greedy" else 0.6, "logprob": None}


def record(rid="r1", source="the src", cands=None, refs=("ref a", "ref b")):
    """A record with one greedy candidate among samples, "s1" twice (for dedupe)."""
    return {"id": rid, "source": source, "references": list(refs), "meta": {},
            "candidates": cands if cands is not None else
            [cand("s1"), cand("g", "greedy"), cand("s2"), cand("s3"), cand("s1")]}
