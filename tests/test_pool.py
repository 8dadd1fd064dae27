"""Pool format: round trips, streaming, gzip, sharding, atomic writes and one test per bad input."""
import gzip
import json
import os

import pytest

from lmcor.data.pool import PoolStats, pool_stats, read_pool, write_pool
from lmcor.data.pool_schema import PoolError, validate_record
from lmcor.io_utils import atomic_open, atomic_write_bytes, atomic_write_text


def _record(i, texts=("Hallo Welt.", "")):
    return {
        "id": f"ex-{i}",
        "source": f"Hello\tworld \"{i}\" \u2028 end",  # tab, quotes and a Unicode line separator
        "references": ["Hallo Welt.", "Hallo, Welt!"],
        "candidates": [
            {"text": t, "generator": "gemma" if k == 0 else "other", "prompt_id": "p0",
             "decoding": "greedy" if k == 0 else "sample", "temperature": 0.0 if k == 0 else 0.6,
             "logprob": -1.5 if k == 0 else None}
            for k, t in enumerate(texts)
        ],
        "meta": {"n": i},
    }


def _write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_sharded(tmp_path, compress):
    records = [_record(i) for i in range(7)]
    paths = write_pool(records, str(tmp_path), shard_size=3, compress=compress)
    assert [os.path.basename(p) for p in paths] == [
        f"pool-0000{k}.jsonl" + (".gz" if compress else "") for k in range(3)]
    if compress:
        with gzip.open(paths[0], "rt", encoding="utf-8") as f:
            assert json.loads(f.readline())["id"] == "ex-0"
    assert list(read_pool(str(tmp_path))) == records
    assert list(read_pool(paths[1])) == records[3:6]


def test_stats_count_empty_candidates(tmp_path):
    write_pool([_record(0), _record(1, texts=("a b c", "  ")), _record(2, texts=())],
               str(tmp_path))
    stats = pool_stats(str(tmp_path))
    assert (stats.examples, stats.references, stats.candidates) == (3, 6, 4)
    assert stats.empty_candidates == 2  # "" and whitespace-only are kept, and counted
    assert dict(stats.candidates_per_generator) == {"gemma": 2, "other": 2}
    d = stats.to_dict()
    assert d["empty_candidates_per_generator"] == {"other": 2}
    assert d["examples_without_candidates"] == 1  # allowed: evaluate counts them too
    assert d["mean_candidate_words"] == (2 + 0 + 3 + 0) / 4


def test_optional_fields_default(tmp_path):
    rec = _record(0)
    del rec["meta"]
    for c in rec["candidates"]:
        del c["logprob"], c["prompt_id"]
    out = validate_record(rec, "x")
    assert out["meta"] == {} and out["candidates"][0]["logprob"] is None
    assert out["candidates"][0]["prompt_id"] is None


def test_read_is_streaming(tmp_path):
    path = tmp_path / "p.jsonl"
    _write_lines(path, [json.dumps(_record(0)), "{broken"])
    it = read_pool(str(path))
    assert next(it)["id"] == "ex-0"  # the first record arrives before the bad line is read
    with pytest.raises(PoolError):
        next(it)


def test_writer_refuses_existing_shards_unless_overwrite(tmp_path):
    write_pool([_record(i) for i in range(4)], str(tmp_path), shard_size=1)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_pool([_record(9)], str(tmp_path))
    write_pool([_record(9)], str(tmp_path), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["pool-00000.jsonl"]  # stale shards removed
    assert [r["id"] for r in read_pool(str(tmp_path))] == ["ex-9"]


def test_writer_validates(tmp_path):
    bad = _record(0)
    bad["candidates"][1]["decoding"] = "beam"
    with pytest.raises(PoolError, match=r"record 1: field 'candidates\[1\]\.decoding'"):
        write_pool([_record(5), bad], str(tmp_path))
    with pytest.raises(PoolError, match="duplicate id 'ex-0'"):
        write_pool([_record(0), _record(0)], str(tmp_path / "b"))


# --- one test per malformed input: each error names file, line and field ---


def _bad_pool(tmp_path, lines):
    path = tmp_path / "bad.jsonl"
    _write_lines(path, lines)
    return str(path)


def test_truncated_json_line(tmp_path):
    line = json.dumps(_record(1))
    path = _bad_pool(tmp_path, [json.dumps(_record(0)), line[: len(line) // 2]])
    with pytest.raises(PoolError, match=rf"^{path}:2: field '<json>': invalid JSON"):
        list(read_pool(path))


def test_missing_field(tmp_path):
    rec = _record(0)
    del rec["references"]
    path = _bad_pool(tmp_path, [json.dumps(rec)])
    with pytest.raises(PoolError, match=rf"^{path}:1: field 'references': missing required field"):
        list(read_pool(path))


def test_missing_candidate_field(tmp_path):
    rec = _record(0)
    del rec["candidates"][1]["generator"]
    path = _bad_pool(tmp_path, [json.dumps(rec)])
    with pytest.raises(PoolError, match=rf"^{path}:1: field 'candidates\[1\]\.generator': missing"):
        list(read_pool(path))


@pytest.mark.parametrize("field,value,pattern", [
    ("references", "one ref", "expected a non-empty list"),
    ("references", [], "expected a non-empty list"),
    ("id", 7, "expected a string, got int"),
    ("candidates", {}, "expected a list, got dict"),
    ("meta", [], "expected an object, got list"),
])
def test_wrong_type(tmp_path, field, value, pattern):
    rec = _record(0)
    rec[field] = value
    path = _bad_pool(tmp_path, [json.dumps(_record(1)), json.dumps(rec)])
    with pytest.raises(PoolError, match=rf"^{path}:2: field '{field}': {pattern}"):
        list(read_pool(path))


@pytest.mark.parametrize("key,value", [("temperature", "hot"), ("temperature", True),
                                       ("logprob", "x"), ("decoding", "beam"), ("text", None)])
def test_wrong_candidate_value(tmp_path, key, value):
    rec = _record(0)
    rec["candidates"][0][key] = value
    path = _bad_pool(tmp_path, [json.dumps(rec)])
    with pytest.raises(PoolError, match=rf"^{path}:1: field 'candidates\[0\]\.{key}'"):
        list(read_pool(path))


def test_unknown_field(tmp_path):
    rec = _record(0)
    rec["referneces"] = ["typo"]
    path = _bad_pool(tmp_path, [json.dumps(rec)])
    with pytest.raises(PoolError, match=rf"^{path}:1: field 'referneces': unknown field"):
        list(read_pool(path))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(PoolError, match=rf"^{path}:0: field '<file>': empty pool file"):
        list(read_pool(str(path)))


def test_blank_line(tmp_path):
    path = _bad_pool(tmp_path, [json.dumps(_record(0)), "", json.dumps(_record(1))])
    with pytest.raises(PoolError, match=rf"^{path}:2: field '<line>': blank line"):
        list(read_pool(path))


def test_duplicate_id_across_shards(tmp_path):
    write_pool([_record(0), _record(1)], str(tmp_path), shard_size=1)
    _write_lines(tmp_path / "pool-00002.jsonl", [json.dumps(_record(0))])
    first = tmp_path / "pool-00000.jsonl"
    with pytest.raises(PoolError, match=rf"pool-00002.jsonl:1: field 'id': duplicate id 'ex-0' "
                                        rf"\(first seen at {first}:1\)"):
        list(read_pool(str(tmp_path)))


def test_truncated_gzip(tmp_path):
    (path,) = write_pool([_record(i) for i in range(50)], str(tmp_path), compress=True)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(PoolError, match=rf"^{path}:\d+: field '<file>': unreadable"):
        list(read_pool(path))


def test_missing_path_and_empty_dir(tmp_path):
    with pytest.raises(PoolError, match="no such pool"):
        list(read_pool(str(tmp_path / "nope.jsonl")))
    with pytest.raises(PoolError, match="no pool shards"):
        list(read_pool(str(tmp_path)))


def test_stats_object_filled_while_streaming(tmp_path):
    write_pool([_record(i) for i in range(3)], str(tmp_path), shard_size=2)
    stats = PoolStats()
    ids = [r["id"] for r in read_pool(str(tmp_path), stats)]
    assert ids == ["ex-0", "ex-1", "ex-2"] and stats.files == 2 and stats.examples == 3


# --- io_utils: atomic writes ---


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write_text(path, "first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert os.listdir(path.parent) == ["f.txt"]  # no temp file left behind


def test_atomic_open_failure_keeps_old_content(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as f:
            f.write("half-written")
            raise RuntimeError("crash")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]
    with pytest.raises(ValueError, match="write modes"):
        with atomic_open(path, "r"):
            pass


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755),
                                                       (0o027, 0o640, 0o750)])
def test_atomic_writes_get_the_modes_the_umask_gives(tmp_path, umask, file_mode, dir_mode):
    """What open() and mkdir() would give, not mkstemp's and mkdtemp's private 0600 and 0700:
    results, pools and released adapters are read by other users."""
    import numpy as np

    from lmcor.checkpoints.released_adapter import save_adapter

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.gin").write_text("# a run's config\n")
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "results.json", "{}")
        [shard] = write_pool([_record(0)], str(tmp_path / "pool"), compress=True)
        save_adapter({"w": np.zeros(2)}, str(tmp_path / "run"), str(tmp_path / "adapter"), 1)
    finally:
        os.umask(old)
    modes = {p: os.stat(p).st_mode & 0o777 for p in (tmp_path / "results.json", shard,
                                                   tmp_path / "adapter" / "adapter.json")}
    assert modes == dict.fromkeys(modes, file_mode)
    assert os.stat(tmp_path / "adapter").st_mode & 0o777 == dir_mode


# --- byte-level problems: bad UTF-8, JSON error columns, repeated keys ---


@pytest.mark.parametrize("compress", [False, True])
def test_bad_utf8_named_on_its_own_physical_line(tmp_path, compress):
    # Line 400 of 500 holds the bad byte; many kilobytes of good lines precede it, so a
    # reader that decodes ahead in blocks would blame an earlier line.
    lines = [json.dumps(_record(i)).encode("ascii") for i in range(500)]
    marker = b"Hallo Welt."
    column = lines[399].index(marker) + len("Hallo W") + 1  # ASCII line: bytes == characters
    lines[399] = lines[399].replace(marker, b"Hallo W\xffelt.", 1)
    data = b"".join(line + b"\n" for line in lines)
    path = tmp_path / ("p.jsonl.gz" if compress else "p.jsonl")
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(PoolError, match=rf"^{path}:400: field '<file>': not valid UTF-8 at "
                                        rf"column {column} \(byte 0xff"):
        list(read_pool(str(path)))


def test_bad_utf8_column_counts_characters(tmp_path):
    path = tmp_path / "p.jsonl"
    # "ü" is two bytes but one column: the bad byte is character 14 of the line.
    path.write_bytes('{"id": "ü", "'.encode("utf-8") + b"\xc3(" + b'": 1}\n')
    with pytest.raises(PoolError, match=rf"^{path}:1: field '<file>': not valid UTF-8 at column 14 "):
        list(read_pool(str(path)))


def test_invalid_json_reports_the_real_column(tmp_path):
    truncated = '{"id": "ex-0", "source": "abc"'  # 30 characters: the record stops after them
    missing_comma = '{"id": "ex-1" "source": "abc"}'
    path = _bad_pool(tmp_path, [json.dumps(_record(0)), truncated])
    with pytest.raises(PoolError, match=rf"^{path}:2: field '<json>': invalid JSON: Expecting "
                                        r"',' delimiter at column 31 \(truncated line\?\)$"):
        list(read_pool(path))
    path = _bad_pool(tmp_path, [missing_comma])
    column = missing_comma.index('"source"') + 1
    with pytest.raises(PoolError, match=rf"^{path}:1: field '<json>': invalid JSON: Expecting "
                                        rf"',' delimiter at column {column} "):
        list(read_pool(path))
    # Cut inside a string: json's message ends in "starting at" and needs the column after it.
    cut = '{"id": "ex-2", "source": "ab'
    path = _bad_pool(tmp_path, [cut])
    column = cut.rindex('"') + 1
    with pytest.raises(PoolError, match=rf"^{path}:1: field '<json>': invalid JSON: Unterminated "
                                        rf"string starting at column {column} "
                                        r"\(truncated line\?\)$"):
        list(read_pool(path))


@pytest.mark.parametrize("old,new,field,key", [
    ('"source": ', '"source": "first", "source": ', "source", "source"),
    ('"generator": "other"', '"generator": "x", "generator": "other"', r"candidates\[1\]\.generator",
     "generator"),
    ('"meta": {"n": 0}', '"meta": {"n": 0, "n": 1}', r"meta\.n", "n"),
])
def test_duplicate_key_is_refused(tmp_path, old, new, field, key):
    line = json.dumps(_record(0))
    assert old in line
    path = _bad_pool(tmp_path, [json.dumps(_record(1)), line.replace(old, new, 1)])
    with pytest.raises(PoolError, match=rf"^{path}:2: field '{field}': duplicate key '{key}'"):
        list(read_pool(path))


def test_failed_write_leaves_no_folder(tmp_path):
    bad = _record(9)
    bad["references"] = []
    out = tmp_path / "new" / "pool"
    # Four good records fill two shards before the bad one is reached.
    with pytest.raises(PoolError, match=r"record 4: field 'references'"):
        write_pool([_record(i) for i in range(4)] + [bad], str(out), shard_size=2)
    assert not (tmp_path / "new").exists()


def test_failed_overwrite_keeps_the_old_pool(tmp_path):
    write_pool([_record(i) for i in range(3)], str(tmp_path), shard_size=1)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    bad = _record(20)
    bad["id"] = ""
    with pytest.raises(PoolError, match=r"record 2: field 'id'"):
        write_pool([_record(10), _record(11), bad], str(tmp_path), shard_size=1, overwrite=True)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before
