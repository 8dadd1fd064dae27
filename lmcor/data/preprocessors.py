"""SeqIO preprocessors: raw pool features (tf) -> {"inputs", "targets", "references", ...}.

`corrector_example` builds each example's input text with `corrector_input.build_corrector_input`
inside the tf.data pipeline, so training, evaluation and serving see exactly the same text.
`RAW_SIGNATURE` is the raw example layout that the JSONL and TFDS pool sources both produce.
"""
import dataclasses
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from lmcor.data.corrector_input import CorrectorOptions, build_corrector_input

_STR = tf.TensorSpec([], tf.string)
_STRS = tf.TensorSpec([None], tf.string)
_FLOATS = tf.TensorSpec([None], tf.float32)
# The raw example layout; the TFDS pool builder produces exactly this structure too.
RAW_SIGNATURE = {
    "id": _STR, "source": _STR, "references": _STRS, "meta": _STR,
    "candidates": {"text": _STRS, "generator": _STRS, "prompt_id": _STRS, "decoding": _STRS,
                   "temperature": _FLOATS, "logprob": _FLOATS},
}


def record_features(rec: Mapping) -> Dict:
    """A validated pool record as the flat features of RAW_SIGNATURE (None -> "" / NaN)."""
    c = rec["candidates"]
    return {"id": rec["id"], "source": rec["source"], "references": list(rec["references"]),
            "meta": json.dumps(rec.get("meta") or {}, ensure_ascii=False, sort_keys=True),
            "candidates": {
                "text": [x["text"] for x in c], "generator": [x["generator"] for x in c],
                "prompt_id": [x.get("prompt_id") or "" for x in c],
                "decoding": [x["decoding"] for x in c],
                "temperature": [float(x["temperature"]) for x in c],
                "logprob": [float("nan") if x.get("logprob") is None else float(x["logprob"])
                            for x in c]}}


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _record_from_arrays(example_id, source, references, peers, texts, generators,
                        decodings) -> Dict:
    return {"id": _text(example_id), "source": _text(source),
            "references": [_text(r) for r in references],
            "peer_references": [_text(r) for r in peers],
            "candidates": [{"text": _text(t), "generator": _text(g), "decoding": _text(d)}
                           for t, g, d in zip(texts, generators, decodings)]}


def corrector_example(dataset: tf.data.Dataset, output_features=None, sequence_length=None,
                      variant: str = "lmcor", generators: Optional[Sequence[str]] = None):
    """SeqIO preprocessor: raw pool features -> corrector text example.

    Output: `inputs` (text), `targets` (the first of the example's references; the source splits
    training records into one per reference), `references` (all of them, JSON), `id`, `source`,
    and the per-example truncation counts. `generators` (a task's own filter) overrides Gin's.
    The `inputs` sequence length (less its EOS) caps the budget, so SeqIO's own trimming, which
    would cut whole trailing candidates and count nothing, never has anything to cut.
    """
    opts = CorrectorOptions()
    if generators is not None:
        opts = dataclasses.replace(opts, generators=tuple(generators))
    vocab = output_features["inputs"].vocabulary if output_features else None
    if vocab is not None and sequence_length and sequence_length.get("inputs"):
        limit = sequence_length["inputs"] - int(output_features["inputs"].add_eos)
        opts = dataclasses.replace(opts, max_input_tokens=min(limit, opts.max_input_tokens or limit))

    def build(example_id, source, references, peers, texts, generators, decodings):
        rec = _record_from_arrays(example_id, source, references, peers, texts, generators,
                                  decodings)
        text, report = build_corrector_input(rec, variant, opts, vocab)
        refs = json.dumps(rec["references"], ensure_ascii=False)
        return (text.encode("utf-8"), refs.encode("utf-8"),
                np.int32(report.truncated_tokens), np.int32(report.truncated_candidates),
                np.int32(report.dropped_candidates))

    def fn(ex):
        c = ex["candidates"]
        peers = ex.get("peer_references", tf.zeros([0], tf.string))  # training splits only
        out = tf.numpy_function(
            build, [ex["id"], ex["source"], ex["references"], peers, c["text"], c["generator"],
                    c["decoding"]],
            [tf.string, tf.string, tf.int32, tf.int32, tf.int32], stateful=False)
        for t in out:
            t.set_shape([])
        return {"id": ex["id"], "source": ex["source"], "inputs": out[0],
                "targets": ex["references"][0], "references": out[1],
                "truncated_tokens": out[2], "truncated_candidates": out[3],
                "dropped_candidates": out[4]}

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def one_example_per_reference(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Raw pool features with R references -> R copies, each holding one of them as its
    `references` and the other R - 1 as `peer_references` (corrector_options.reference_candidate
    may show one of those to the corrector as a candidate)."""
    def split(ex):
        refs = ex["references"]

        def one(i):
            return {**ex, "references": refs[i:i + 1],
                    "peer_references": tf.concat([refs[:i], refs[i + 1:]], 0)}

        return tf.data.Dataset.range(tf.size(refs, out_type=tf.int64)).map(one)

    return dataset.flat_map(split)


def references_of(example: Mapping[str, Any]) -> List[str]:
    """All references of a (numpy) task example, decoded from its JSON `references` feature."""
    return json.loads(_text(example["references"]))
