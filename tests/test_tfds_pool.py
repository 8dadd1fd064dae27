"""A pool round-trips JSONL -> TFDS (TFRecord) -> SeqIO task and gives the same examples."""
import itertools
import json
import math

import gin
import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from lmcor.data.importers import import_wmt
from lmcor.data.pool import read_pool, write_pool
from lmcor.data.pool_schema import PoolError
from lmcor.data.tfds_pool import LmcorPool, prepare_pool
from lmcor.tasks import common

LENGTHS = {"inputs": 512, "targets": 128}


def _varied(rec, i):
    """Real WMT23 candidates, with every optional candidate field exercised."""
    cands = [dict(c) for c in rec["candidates"][:4]]
    cands[1].update(decoding="sample", temperature=0.6, logprob=-2.25, prompt_id=f"fewshot-{i % 2}")
    cands[2]["text"] = ""  # empty candidates are legal and must survive the trip
    return {**rec, "candidates": cands, "meta": {"row": i, "note": "quotes \" and tabs \t"}}


@pytest.fixture(scope="module")
def pools(data_dir, tmp_path_factory, task_spm_path):
    gin.bind_parameter("task_vocabulary.spm_model", task_spm_path)
    root = tmp_path_factory.mktemp("pools")
    recs = [_varied(r, i) for i, r in enumerate(itertools.islice(import_wmt(data_dir, "wmt23"), 12))]
    write_pool(recs[:8], str(root / "manual" / "train"), shard_size=3)
    write_pool(recs[8:], str(root / "manual" / "test"), compress=True)
    assert prepare_pool(str(root / "manual"), str(root / "tfds")) == ["test", "train"]
    jsonl = common.register_pool_task("rt_jsonl", {"train": str(root / "manual" / "train"),
                                                   "test": str(root / "manual" / "test")})
    tfrec = common.register_pool_task("rt_tfds", tfds_data_dir=str(root / "tfds"))
    yield root, jsonl, tfrec
    gin.bind_parameter("task_vocabulary.spm_model", None)  # the default; keeps others' bindings


def _equal(a, b):
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


def test_raw_records_survive_the_trip(pools):
    root, _, _ = pools
    builder = LmcorPool(data_dir=str(root / "tfds"))
    for split in ("train", "test"):
        originals = list(read_pool(str(root / "manual" / split)))
        stored = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
        assert len(stored) == len(originals)
        for rec, ex in zip(originals, stored):
            assert ex["id"].decode() == rec["id"]  # pool order is kept
            assert ex["source"].decode() == rec["source"]
            assert [r.decode() for r in ex["references"]] == rec["references"]
            assert json.loads(ex["meta"]) == rec["meta"]
            for k, cand in enumerate(rec["candidates"]):
                got = {key: ex["candidates"][key][k] for key in ex["candidates"]}
                assert got["text"].decode() == cand["text"]
                assert got["generator"].decode() == cand["generator"]
                assert got["decoding"].decode() == cand["decoding"]
                assert got["prompt_id"].decode() == (cand["prompt_id"] or "")
                assert got["temperature"] == np.float32(cand["temperature"])
                want = float("nan") if cand["logprob"] is None else cand["logprob"]
                assert _equal(float(got["logprob"]), want)


@pytest.mark.parametrize("variant", ["finetune", "lmcor", "lmcor_single"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_seqio_examples_are_identical(pools, variant, split):
    _, jsonl, tfrec = pools
    a = list(seqio.get_mixture_or_task(f"rt_jsonl_{variant}").get_dataset(
        LENGTHS, split=split, shuffle=False).as_numpy_iterator())
    b = list(seqio.get_mixture_or_task(f"rt_tfds_{variant}").get_dataset(
        LENGTHS, split=split, shuffle=False).as_numpy_iterator())
    assert len(a) == len(b) == (8 if split == "train" else 4)  # wmt23 has one reference
    assert f"rt_tfds_{variant}" in tfrec and f"rt_jsonl_{variant}" in jsonl
    assert isinstance(seqio.get_mixture_or_task(f"rt_tfds_{variant}").source, seqio.TfdsDataSource)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"{variant}/{split}: {key}")


def test_manual_dir_without_split_folders_is_refused(tmp_path):
    (tmp_path / "manual" / "train").mkdir(parents=True)
    (tmp_path / "manual" / "train" / "notes.txt").write_text("not a shard")
    with pytest.raises(PoolError, match="no split sub-folder"):
        prepare_pool(str(tmp_path / "manual"), str(tmp_path / "tfds"))
