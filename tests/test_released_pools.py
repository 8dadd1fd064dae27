"""The released pools under data/pools/: each file matches its manifest and reads as a pool; and
`lmcor pool release` on a small real sampling-job folder (validation, byte-stable output, the
size cap, refusals)."""
import gzip
import hashlib
import importlib.util
import json
import pathlib
import re
import shutil

import pytest

from _cli import run_pool
from lmcor.sampling import job as sample
from lmcor.sampling.backends.base import SamplingParams
from lmcor.sampling.backends.precomputed import PrecomputedBackend
from lmcor.data import pool_release
from lmcor.data.pool import read_pool, resolve_pool_path, write_pool
from lmcor.data.pool_schema import PoolError
from lmcor.sampling.prompts import PromptConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
RELEASE = REPO / "data" / "pools"
N, SHARD, SAMPLES = 5, 2, 2


def _sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _planned_names():
    spec = importlib.util.spec_from_file_location("real_pools", REPO / "scripts" / "real_pools.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {module.pool_name(t, s, v) for t, s, _, v in module.POOLS}


# ---- the release in the repository ----------------------------------------------------------

def _manifest():
    with open(RELEASE / "manifest.json", encoding="utf-8") as f:
        return json.load(f)


def test_release_folder_holds_only_listed_files_under_the_cap():
    manifest = _manifest()
    assert manifest["format"] == "lmcor-pool-release" and manifest["version"] == 1
    listed = {e["file"] for e in manifest["pools"].values()}
    on_disk = {p.name for p in RELEASE.iterdir() if not p.name.startswith(".")}
    assert on_disk - {"manifest.json"} == listed, "every released file, and only those, is listed"
    assert sum(p.stat().st_size for p in RELEASE.iterdir()) <= pool_release.MAX_RELEASE_BYTES


def test_every_released_pool_matches_its_manifest(capsys, tmp_path, monkeypatch):
    pools = _manifest()["pools"]
    if not pools:
        pytest.skip("data/pools/manifest.json lists no pools yet (release them with "
                    "`lmcor pool release POOL_DIR ... --out=data/pools`)")
    monkeypatch.chdir(tmp_path)  # relative names resolve from the repository root
    for name, entry in sorted(pools.items()):
        path = RELEASE / entry["file"]
        assert entry["file"] == f"{name}.jsonl.gz" and path.is_file(), name
        assert path.stat().st_size == entry["bytes"], name
        assert _sha256(path) == entry["sha256"], name
        code, stats, err = run_pool(["stats", f"data/pools/{entry['file']}"], capsys)
        assert code == 0, err
        assert stats["examples"] == entry["records"], name
        assert stats["candidates"] == entry["candidates"], name
        config = entry["config"]
        made_from = config.get("task") or config.get("split")  # a sampled | an imported pool
        assert entry["commit"] and made_from == name.split("_")[0], name


def test_configs_name_planned_released_pools():
    """The gin defaults point at data/pools/<name>.jsonl.gz of a planned or released pool, never
    at the ignored pools/."""
    planned = _planned_names() | set(_manifest()["pools"])
    files = [*REPO.glob("gin/runs/evaluate_pools*.gin"), *REPO.glob("gin/runs/tables/*.gin")]
    named = {}
    for path in files:
        text = path.read_text()
        assert not re.search(r"""['"]pools/""", text), path
        for name in re.findall(r"data/pools/([A-Za-z0-9_]+)\.jsonl\.gz", text):
            named.setdefault(name, path)
    unplanned = {n: str(p) for n, p in named.items() if n not in planned}
    assert named and not unplanned, unplanned


# ---- the release command on a small real sampling-job folder -------------------------------

@pytest.fixture(scope="module")
def sampled(data_dir, tmp_path_factory) -> pathlib.Path:
    """The sampling job's folder for 5 JFLEG test sentences: 3 shards and its manifest, each
    candidate replayed from line files (greedy + 2 samples) by the precomputed backend."""
    root = tmp_path_factory.mktemp("sampled")
    src = (data_dir / "jfleg" / "test" / "test.src").read_text().split("\n")[:-1]
    files = []
    for tag in ("greedy", "s1", "s2"):
        files.append(root / f"{tag}.txt")
        files[-1].write_text("".join(f"{tag}: {line}\n" for line in src))
    backend = PrecomputedBackend(greedy_file=str(files[0]),
                                 sample_files=[str(f) for f in files[1:]], task="jfleg",
                                 split="test", data_dir=str(data_dir), name="sys-a",
                                 sample_temperature=0.7)
    out = root / "jfleg_test_jfleg_io"
    summary = sample.sample_pool(
        output_dir=str(out), task="jfleg", split="test", demo_split="dev", data_dir=str(data_dir),
        backend=backend, max_examples=N, shard_size=SHARD,
        prompt=PromptConfig("jfleg_io", num_shots=2),
        sampling=SamplingParams(num_samples=SAMPLES, temperature=0.7))
    assert summary["status"] == "complete" and summary["code_version"]
    return out


def _copy(pool: pathlib.Path, tmp_path, name="jfleg_test_jfleg_io") -> pathlib.Path:
    return pathlib.Path(shutil.copytree(pool, tmp_path / "in" / name))


def test_release_writes_the_pool_and_its_entry_byte_stable(sampled, tmp_path, capsys):
    out = tmp_path / "release"
    code, result, err = run_pool(["release", sampled, "--out", out], capsys)
    assert code == 0, err
    path = out / "jfleg_test_jfleg_io.jsonl.gz"
    entry = json.loads((out / "manifest.json").read_text())["pools"]["jfleg_test_jfleg_io"]
    source = json.loads((sampled / "manifest.json").read_text())
    assert entry == {"file": path.name, "sha256": _sha256(path), "bytes": path.stat().st_size,
                     "records": N, "candidates": N * (1 + SAMPLES),
                     "candidates_per_record": 1 + SAMPLES, "commit": source["code_version"],
                     "model": "sys-a", "config": source["config"]}
    assert result["released"]["jfleg_test_jfleg_io"]["sha256"] == entry["sha256"]
    head = path.read_bytes()[:10]
    assert head[3] == 0 and head[4:8] == b"\0\0\0\0"  # no file name, mtime 0
    assert list(read_pool(str(path))) == list(read_pool(str(sampled)))
    code, stats, err = run_pool(["stats", path], capsys)
    assert code == 0 and stats["examples"] == N, err

    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert run_pool(["release", sampled, "--out", out], capsys)[0] == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first

    # A second pool joins the manifest; the first one's entry and file stay as they were.
    other = _copy(sampled, tmp_path, "jfleg_test_copy")
    assert run_pool(["release", other, "--out", out], capsys)[0] == 0
    pools = json.loads((out / "manifest.json").read_text())["pools"]
    assert sorted(pools) == ["jfleg_test_copy", "jfleg_test_jfleg_io"]
    assert pools["jfleg_test_jfleg_io"] == entry and path.read_bytes() == first[path.name]
    assert pools["jfleg_test_copy"]["sha256"] == entry["sha256"]  # same records, same bytes


def test_a_released_file_that_changed_is_refused_naming_it(sampled, tmp_path, capsys):
    out = tmp_path / "release"
    pool_release.release_pools([str(sampled)], str(out))
    path = out / "jfleg_test_jfleg_io.jsonl.gz"
    records = list(read_pool(str(path)))
    records[0]["candidates"][0]["text"] = "edited"
    with gzip.open(path, "wt", encoding="utf-8") as f:  # a valid pool, just not the released one
        f.writelines(json.dumps(r) + "\n" for r in records)
    with pytest.raises(PoolError, match=rf"{re.escape(str(path))}:0: .*sha256 [0-9a-f]+ differs"):
        list(read_pool(str(path)))
    code, _, err = run_pool(["stats", path], capsys)
    assert code == 2 and err.count("error:") == 1 and str(path) in err
    stray = out / "unlisted.jsonl.gz"
    shutil.copy(path, stray)
    with pytest.raises(PoolError, match=r"unlisted\.jsonl\.gz:0: .*not listed in"):
        list(read_pool(str(stray)))


def _unfinished(pool):
    manifest = json.loads((pool / "manifest.json").read_text())
    (pool / "manifest.json").write_text(json.dumps({**manifest, "status": "partial"}))


def _truncated_shard(pool):
    shard = pool / "pool-00001.jsonl"
    shard.write_text(shard.read_text()[:-20])


def _missing_shard(pool):
    (pool / "pool-00002.jsonl").unlink()


def _extra_candidate(pool):
    shard = pool / "pool-00000.jsonl"
    lines = shard.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["candidates"].append(dict(rec["candidates"][-1]))
    shard.write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")


def _no_manifest(pool):
    (pool / "manifest.json").unlink()


@pytest.mark.parametrize("spoil,problem", [
    (_unfinished, r"unfinished pool \(manifest status 'partial'"),
    (_truncated_shard, r"pool-00001\.jsonl:2: field '<json>'"),
    (_missing_shard, r"4 records on disk, but the manifest counts 5 of 5"),
    (_extra_candidate, r"record 'jfleg-test-0000' has 4 candidates; .* gives 3"),
    (_no_manifest, r"no manifest\.json; only a pool written by the sampling job"),
])
def test_an_invalid_pool_is_refused_naming_it(spoil, problem, sampled, tmp_path, capsys):
    good = _copy(sampled, tmp_path, "good_pool")
    bad = _copy(sampled, tmp_path, "bad_pool")
    spoil(bad)
    out = tmp_path / "release"
    code, _, err = run_pool(["release", good, bad, "--out", out], capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("lmcor pool release: error:")]
    assert code == 2 and len(lines) == 1, err
    assert str(bad) in lines[0] and re.search(problem, lines[0]), lines[0]
    assert not out.exists()  # every pool is checked before anything is written


def test_the_size_cap_is_enforced(sampled, tmp_path, capsys, monkeypatch):
    out = tmp_path / "release"
    pool_release.release_pools([str(sampled)], str(out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    used = sum(len(b) for b in before.values())
    monkeypatch.setattr(pool_release, "MAX_RELEASE_BYTES", used + 100)
    other = _copy(sampled, tmp_path, "jfleg_test_copy")
    code, _, err = run_pool(["release", other, "--out", out], capsys)
    assert code == 2 and re.search(rf"{re.escape(str(out))}: the release would hold \d+ bytes, "
                                   rf"over the cap of {used + 100} bytes", err), err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # Re-releasing the pools already there replaces them, so it still fits.
    assert run_pool(["release", sampled, "--out", out], capsys)[0] == 0
    monkeypatch.setattr(pool_release, "MAX_RELEASE_BYTES", 50)
    code, _, err = run_pool(["release", sampled, "--out", tmp_path / "small"], capsys)
    assert code == 2 and "exceeds the release cap of 50 bytes" in err, err
    assert not (tmp_path / "small").exists()


def test_release_folder_refuses_a_foreign_manifest_and_duplicate_names(sampled, tmp_path, capsys):
    out = tmp_path / "release"
    out.mkdir()
    (out / "manifest.json").write_text('{"config": {}}')
    code, _, err = run_pool(["release", sampled, "--out", out], capsys)
    assert code == 2 and "is no pool release manifest" in err, err
    code, _, err = run_pool(["release", sampled, sampled, "--out", tmp_path / "b"], capsys)
    assert code == 2 and "given more than once: jfleg_test_jfleg_io" in err, err


def test_a_released_name_resolves_from_the_repository_root(tmp_path, monkeypatch):
    root = tmp_path / "checkout"
    write_pool([{"id": "a", "source": "s", "references": ["r"], "candidates": []}],
               str(root / "data" / "pools"), prefix="x", compress=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rel = "data/pools/x-00000.jsonl.gz"
    assert resolve_pool_path(rel, str(root)) == str(root / rel)
    missing = "data/pools/missing.jsonl.gz"
    assert resolve_pool_path(missing, str(root)) == missing  # read_pool names it as given
