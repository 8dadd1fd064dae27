"""`lmcor pool import --records --generators` on the real wmt23 data and `lmcor pool release` of
the folder it writes: the records and candidates kept (checked against the raw files), the
import manifest, and the folders and settings refused."""
import hashlib
import json
import pathlib
import re
import shutil
import subprocess

import pytest

from _cli import one_line_error, run_pool
from lmcor.cli import pool_command
from lmcor.data.pool import read_pool

REPO = pathlib.Path(__file__).resolve().parents[1]
START = 550  # the last 7 of wmt23's paragraphs: 3 shards of --shard_size=3
KEEP = ["ZengHuiMT", "GPT4-5shot", "ONLINE-W"]  # not the systems' (alphabetical) file order
NAME = "wmt23_tail"


def _sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _lines(path: pathlib.Path):
    text = path.read_bytes().decode("utf-8")
    assert text.endswith("\n"), path
    return text[:-1].split("\n")


def _wmt23(data_dir) -> pathlib.Path:
    return data_dir / "wmt_en_de" / "wmt23"


def _import(data_dir, out, *flags, capsys):
    return run_pool(["import", "--dataset=wmt", "--split=wmt23", f"--data_dir={data_dir}",
                 f"--out={out}", *flags], capsys)


@pytest.fixture(scope="module")
def imported(data_dir, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("imported") / NAME
    code = pool_command.main(["import", "--dataset=wmt", "--split=wmt23", f"--data_dir={data_dir}",
                          f"--out={out}", f"--records={START}:", f"--generators={','.join(KEEP)}",
                          "--shard_size=3"])
    assert code == 0
    return out


def test_the_import_manifest_records_settings_sources_commit_and_counts(imported, data_dir):
    manifest = json.loads((imported / "manifest.json").read_text())
    folder = _wmt23(data_dir)
    total = len(_lines(folder / "source.en"))
    read = [folder / "source.en", folder / "reference.A.de", *(folder / "systems").glob("*.de")]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()
    shards = sorted(p.name for p in imported.glob("*.jsonl"))
    assert manifest["status"] == "complete" and manifest["code_version"] == head
    assert manifest["config"] == {"dataset": "wmt", "split": "wmt23", "records": f"{START}:",
                                  "generators": KEEP}
    assert manifest["sources"] == {f"wmt_en_de/{p.relative_to(folder.parent)}": _sha256(p)
                                   for p in read}
    assert manifest["shards"] == {name: _sha256(imported / name) for name in shards}
    assert len(shards) == 3
    counts = manifest["counts"]
    assert (counts["source_records"], counts["examples"]) == (total, total - START)
    assert counts["candidates_per_generator"] == {g: total - START for g in KEEP}


def test_an_imported_slice_of_chosen_generators_releases_in_order(imported, data_dir, tmp_path,
                                                                  capsys):
    out = tmp_path / "release"
    code, result, err = run_pool(["release", imported, "--out", out], capsys)
    assert code == 0, err
    path = out / f"{NAME}.jsonl.gz"
    folder = _wmt23(data_dir)
    raw = {"source": _lines(folder / "source.en"), "ref": _lines(folder / "reference.A.de"),
           **{g: _lines(folder / "systems" / f"{g}.de") for g in KEEP}}
    kept = range(START, len(raw["source"]))
    records = list(read_pool(str(path)))
    assert [r["id"] for r in records] == [f"wmt23-ende-{i:05d}" for i in kept]
    for i, rec in zip(kept, records):
        assert (rec["source"], rec["references"]) == (raw["source"][i], [raw["ref"][i]])
        assert [(c["generator"], c["text"]) for c in rec["candidates"]] == \
            [(g, raw[g][i]) for g in KEEP]
    entry = json.loads((out / "manifest.json").read_text())["pools"][NAME]
    source = json.loads((imported / "manifest.json").read_text())
    assert entry == {"file": path.name, "sha256": _sha256(path), "bytes": path.stat().st_size,
                     "records": len(kept), "candidates": len(kept) * len(KEEP),
                     "candidates_per_record": len(KEEP), "commit": source["code_version"],
                     "config": source["config"], "sources": source["sources"]}
    assert result["released"][NAME]["sha256"] == entry["sha256"]
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert run_pool(["release", imported, "--out", out], capsys)[0] == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_an_import_of_every_candidate_releases_them_all(data_dir, tmp_path, capsys):
    pool = tmp_path / "all"
    code, _, err = _import(data_dir, pool, "--records=-2:", capsys=capsys)
    assert code == 0, err
    code, _, err = run_pool(["release", pool, "--out", tmp_path / "release"], capsys)
    assert code == 0, err
    systems = sorted(p.name[:-len(".de")] for p in (_wmt23(data_dir) / "systems").glob("*.de"))
    records = list(read_pool(str(tmp_path / "release" / "all.jsonl.gz")))
    assert [r["id"] for r in records] == ["wmt23-ende-00555", "wmt23-ende-00556"]
    assert all([c["generator"] for c in r["candidates"]] == systems for r in records)


def test_a_record_missing_a_generator_is_refused(data_dir, tmp_path, capsys):
    out = tmp_path / "pool"
    code, _, err = _import(data_dir, out, f"--records={START}:",
                           "--generators=GPT4-5shot,GPT5-0shot", capsys=capsys)
    message = one_line_error(err, "pool import")
    assert code == 2 and re.match(r"record 'wmt23-ende-00550' has no candidate\(s\) of generator "
                                  r"'GPT5-0shot' \(its generators: AIRC, GPT4-5shot, ", message)
    assert not out.exists()


@pytest.mark.parametrize("flags,problem", [
    (["--records=279"], r"--records='279': expected START:END"),
    (["--records=1:2:3"], r"--records='1:2:3': expected START:END"),
    (["--records=600:"], r"--records=600: keeps none of the 557 records of wmt/wmt23"),
    (["--generators=ONLINE-W,,ONLINE-A"], r"an empty generator name"),
    (["--generators=ONLINE-W,ONLINE-A,ONLINE-W"], r"ONLINE-W given more than once"),
])
def test_bad_import_settings_are_one_line(flags, problem, data_dir, tmp_path, capsys):
    code, _, err = _import(data_dir, tmp_path / "pool", *flags, capsys=capsys)
    assert code == 2 and re.search(problem, one_line_error(err, "pool import"))
    assert not (tmp_path / "pool").exists()


def test_an_import_replaces_an_earlier_one_only_when_told(imported, data_dir, tmp_path, capsys):
    pool = pathlib.Path(shutil.copytree(imported, tmp_path / NAME))
    before = {p.name: p.read_bytes() for p in pool.iterdir()}
    code, _, err = _import(data_dir, pool, "--records=-1:", capsys=capsys)
    assert code == 2 and "holds an earlier import; pass --overwrite" in err
    assert {p.name: p.read_bytes() for p in pool.iterdir()} == before
    code, _, err = _import(data_dir, pool, "--records=-1:", "--overwrite", capsys=capsys)
    assert code == 0, err
    manifest = json.loads((pool / "manifest.json").read_text())
    assert manifest["config"]["records"] == "-1:" and list(manifest["shards"]) == \
        sorted(p.name for p in pool.glob("*.jsonl")) == ["wmt-wmt23-00000.jsonl"]
    release = tmp_path / "release"
    assert run_pool(["release", pool, "--out", release], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in release.iterdir()}
    code, _, err = _import(data_dir, release, "--overwrite", capsys=capsys)
    assert code == 2 and "is no pool import manifest" in one_line_error(err, "pool import")
    assert {p.name: p.read_bytes() for p in release.iterdir()} == before


# ---- import folders the release refuses ----------------------------------------------------

def _manifest_edit(change):
    def spoil(pool):
        path = pool / "manifest.json"
        manifest = json.loads(path.read_text())
        change(manifest)
        path.write_text(json.dumps(manifest))
    return spoil


def _edited_candidate(pool):  # still valid records, and as many: only the hashes tell
    shard = pool / "wmt-wmt23-00001.jsonl"
    recs = [json.loads(line) for line in shard.read_text().splitlines()]
    recs[0]["candidates"][1]["text"] = "bearbeitet"
    shard.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))


def _added_shard(pool):
    shard = pool / "wmt-wmt23-00002.jsonl"
    rec = json.loads(shard.read_text())
    (pool / "wmt-wmt23-00003.jsonl").write_text(json.dumps({**rec, "id": "extra"}) + "\n")


@pytest.mark.parametrize("spoil,problem", [
    (lambda pool: (pool / "manifest.json").unlink(), r"no manifest\.json; only a pool written by"),
    (_manifest_edit(lambda m: m.pop("status")), r"unfinished pool \(manifest status None, not "
                                                r"'complete'\); import it again"),
    (_manifest_edit(lambda m: m.pop("code_version")), r"no commit recorded \(code_version\)"),
    (_edited_candidate, r"wmt-wmt23-00001\.jsonl: sha256 [0-9a-f]{64} differs from [0-9a-f]{64} "
                        r"in the import manifest"),
    (lambda pool: (pool / "wmt-wmt23-00002.jsonl").unlink(),
     r"shard wmt-wmt23-00002\.jsonl of the import manifest is missing"),
    (_added_shard, r"wmt-wmt23-00003\.jsonl: shard not listed in the import manifest"),
    (_manifest_edit(lambda m: m["config"]["generators"].reverse()),
     r"record 'wmt23-ende-00550' candidate 0 has generator 'ZengHuiMT'; the import manifest "
     r"gives 'ONLINE-W'"),
    (_manifest_edit(lambda m: m["config"]["generators"].pop()),
     r"record 'wmt23-ende-00550' has 3 candidates; the import manifest gives 2"),
    (_manifest_edit(lambda m: m["counts"].update(examples=8)),
     r"7 records on disk, but the manifest counts 8; import it again"),
])
def test_a_tampered_or_incomplete_import_is_refused(spoil, problem, imported, tmp_path, capsys):
    good = shutil.copytree(imported, tmp_path / "good")
    bad = pathlib.Path(shutil.copytree(imported, tmp_path / "bad"))
    spoil(bad)
    out = tmp_path / "release"
    code, _, err = run_pool(["release", good, bad, "--out", out], capsys)
    message = one_line_error(err, "pool release")
    assert code == 2 and str(bad) in message and re.search(problem, message), message
    assert not out.exists()  # every pool is checked before anything is written


# ---- the released wmt23_test pool ----------------------------------------------------------

WMT23_TEST = ["GPT4-5shot", "ONLINE-W", "ONLINE-A", "ONLINE-B", "ZengHuiMT"]


def test_the_released_wmt23_test_is_the_held_out_half_of_the_chosen_systems(data_dir):
    """data/pools/wmt23_test: the second half of wmt23 (the held-out test half of
    lmcor.tasks.wmt), GPT4-5shot then the 4 systems of highest validation chrF, as in the raw
    files the manifest names."""
    folder = _wmt23(data_dir)
    raw = {"source": _lines(folder / "source.en"), "ref": _lines(folder / "reference.A.de"),
           **{g: _lines(folder / "systems" / f"{g}.de") for g in WMT23_TEST}}
    n = len(raw["source"])
    held_out = range((n + 1) // 2, n)
    release = REPO / "data" / "pools"
    entry = json.loads((release / "manifest.json").read_text())["pools"]["wmt23_test"]
    assert entry["config"] == {"dataset": "wmt", "split": "wmt23",
                               "records": f"{(n + 1) // 2}:", "generators": WMT23_TEST}
    for name, sha in entry["sources"].items():
        assert _sha256(data_dir / name) == sha, name
    records = list(read_pool(str(release / "wmt23_test.jsonl.gz")))
    assert [r["id"] for r in records] == [f"wmt23-ende-{i:05d}" for i in held_out]
    for i, rec in zip(held_out, records):
        assert (rec["source"], rec["references"]) == (raw["source"][i], [raw["ref"][i]])
        assert [(c["generator"], c["text"]) for c in rec["candidates"]] == \
            [(g, raw[g][i]) for g in WMT23_TEST]
