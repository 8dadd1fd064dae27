"""Released pools: the candidate pools behind the README tables, committed under data/pools/.

A release folder holds one `<name>.jsonl.gz` per pool (every record, in pool order) and a
`manifest.json` giving, per pool, its file, sha256, size, record and candidate counts, and how
the pool was made (config and commit). A pool folder is released only when its own manifest
vouches for it: a finished sampling-job folder (`lmcor sample`, scripts/real_pools.py) or a
`lmcor pool import` folder (lmcor.data.pool_import). Both go through the same checks of that
manifest (complete, a commit) and of the records against it (count, candidates per record and
the field the manifest fixes for each: the prompt variant of a sample, the generator of an
import) before anything is written. Readers (lmcor.data.pool.read_pool) verify a released
file's sha256 against the manifest.

The gzip stream has mtime 0, no file name and a fixed level, and records are serialized the
same way every time, so releasing the same pool twice gives the same bytes (and no git diff).
"""
import collections
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set

from lmcor.paths import MANIFEST, REPO_ROOT
from lmcor.data import pool_import
from lmcor.data.pool import RELEASE_FORMAT, RELEASE_MANIFEST, read_pool, release_manifest
from lmcor.data.pool_schema import PoolError
from lmcor.io_utils import atomic_write_bytes

DEFAULT_OUT = os.path.join(REPO_ROOT, "data", "pools")
SUFFIX = ".jsonl.gz"
GZIP_LEVEL = 9
# The release lives in git: every clone carries it, so its size is capped on purpose.
MAX_RELEASE_BYTES = 20 * 1000 * 1000
MANIFEST_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ReleaseError(PoolError):
    """A pool cannot be released (unfinished, inconsistent, or the release would be too big)."""


@dataclasses.dataclass
class Release:
    name: str
    data: bytes
    entry: Dict[str, Any]


def _line(rec: Dict[str, Any]) -> bytes:
    return (json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def encode_release(name: str, records: Iterable[Dict[str, Any]],
                   provenance: Dict[str, Any]) -> Release:
    """The gzip JSONL bytes of `records` and their manifest entry (`provenance` merged in)."""
    if not _NAME.match(name) or name.endswith(SUFFIX):
        raise ReleaseError(f"{name!r}: not a usable release name (letters, digits, '_', '.', '-')")
    buf = io.BytesIO()
    per_record: collections.Counter = collections.Counter()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=GZIP_LEVEL,
                       mtime=0) as gz:
        for rec in records:
            gz.write(_line(rec))
            per_record[len(rec["candidates"])] += 1
            if buf.tell() > MAX_RELEASE_BYTES:  # stop early: this pool alone can never fit
                raise ReleaseError(f"{name}: compressed pool exceeds the release cap of "
                                   f"{MAX_RELEASE_BYTES} bytes (MAX_RELEASE_BYTES)")
    if not per_record:
        raise ReleaseError(f"{name}: no records (an empty pool is not a pool)")
    data = buf.getvalue()
    if len(data) > MAX_RELEASE_BYTES:
        raise ReleaseError(f"{name}: compressed pool exceeds the release cap of "
                           f"{MAX_RELEASE_BYTES} bytes (MAX_RELEASE_BYTES)")
    counts = sorted(per_record)
    entry = {"file": name + SUFFIX, "sha256": hashlib.sha256(data).hexdigest(),
             "bytes": len(data), "records": sum(per_record.values()),
             "candidates": sum(k * n for k, n in per_record.items()),
             "candidates_per_record": counts[0] if len(counts) == 1
             else {"min": counts[0], "max": counts[-1]},
             **provenance}
    return Release(name, data, entry)


_REDO = {"sampled": "sample it again (rerun the same command: it resumes)",
         "imported": "import it again (lmcor pool import ... --overwrite)"}


def _kind(manifest: Dict[str, Any]) -> str:
    return "imported" if manifest.get("format") == pool_import.IMPORT_FORMAT else "sampled"


def _pool_manifest(pool_dir: str) -> Dict[str, Any]:
    """The manifest of a finished sampling-job or import folder: complete, naming its commit."""
    path = os.path.join(pool_dir, MANIFEST)
    if not os.path.isdir(pool_dir):
        raise ReleaseError(f"{pool_dir}: not a pool folder")
    manifest = pool_import.read_manifest(pool_dir)
    if manifest is None:
        raise ReleaseError(f"{pool_dir}: no {MANIFEST}; only a pool written by the "
                           "sampling job (lmcor sample, scripts/real_pools.py) or by lmcor pool "
                           "import can be released")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise ReleaseError(f"{path}: not a sampling or import manifest (no 'config' object)")
    if manifest.get("status") != "complete":
        raise ReleaseError(f"{pool_dir}: unfinished pool (manifest status "
                           f"{manifest.get('status')!r}, not 'complete'); "
                           f"{_REDO[_kind(manifest)]} before releasing it")
    if not manifest.get("code_version"):
        raise ReleaseError(f"{path}: no commit recorded (code_version); a released pool must "
                           "name the code that made it")
    return manifest


@dataclasses.dataclass
class _Expected:
    """What a pool folder's own manifest says its records are."""

    counts: Set[Any]  # every record count the manifest gives; each must be the count on disk
    counted: str  # those counts as the error quotes them
    field: str  # the candidate field that `values` fixes
    values: Optional[List[Any]]  # that field of each candidate of every record; None: unchecked
    given_by: str  # what fixes `values`, as the error names it ("... gives")
    redo: str  # how to make the pool again, should its records not match
    provenance: Dict[str, Any]  # what the release entry records of the pool's making


def _expected_candidates(pool_dir: str, config: Dict[str, Any]) -> int:
    sampling = config.get("sampling")
    try:
        return int(bool(sampling["greedy"])) + int(sampling["num_samples"])
    except (TypeError, KeyError, ValueError) as e:
        raise ReleaseError(f"{pool_dir}: manifest config.sampling lacks greedy/num_samples "
                           f"({e!r})") from e


def _sampled(pool_dir: str, manifest: Dict[str, Any]) -> _Expected:
    config, counts = manifest["config"], manifest.get("counts", {})
    variant = config.get("prompt", {}).get("variant")
    return _Expected(
        counts={counts.get("expected_examples"), counts.get("examples")},
        counted=f"{counts.get('examples')} of {counts.get('expected_examples')} expected",
        field="prompt_id", values=[variant] * _expected_candidates(pool_dir, config),
        given_by="the manifest's sampling config gives", redo=_REDO["sampled"],
        provenance={"commit": manifest["code_version"], "model": manifest.get("model"),
                    "config": config})


def _imported(pool_dir: str, manifest: Dict[str, Any]) -> _Expected:
    pool_import.check_shards(pool_dir, manifest)
    config, counts = manifest["config"], manifest.get("counts", {})
    generators = config.get("generators")
    if generators is not None and not isinstance(generators, list):
        raise ReleaseError(f"{os.path.join(pool_dir, MANIFEST)}: config.generators "
                           f"is {generators!r}, not a list of names")
    return _Expected(
        counts={counts.get("examples")}, counted=f"{counts.get('examples')}",
        field="generator", values=generators, given_by="the import manifest gives",
        redo=_REDO["imported"],
        provenance={"commit": manifest["code_version"], "config": config,
                    "sources": manifest.get("sources")})


def _check_candidates(pool_dir: str, rec: Dict[str, Any], expected: _Expected) -> None:
    cands, values = rec["candidates"], expected.values
    if values is None:
        return
    if len(cands) != len(values):
        raise ReleaseError(f"{pool_dir}: record {rec['id']!r} has {len(cands)} candidates; "
                           f"{expected.given_by} {len(values)}")
    for i, (cand, value) in enumerate(zip(cands, values)):
        if cand[expected.field] != value:
            raise ReleaseError(f"{pool_dir}: record {rec['id']!r} candidate {i} has "
                               f"{expected.field} {cand[expected.field]!r}; "
                               f"{expected.given_by} {value!r}")


def _checked_records(pool_dir: str, expected: _Expected) -> Iterable[Dict[str, Any]]:
    """The pool's records (read_pool validates each), checked against its manifest."""
    n = 0
    for rec in read_pool(pool_dir):
        n += 1
        _check_candidates(pool_dir, rec, expected)
        yield rec
    if expected.counts != {n}:
        raise ReleaseError(f"{pool_dir}: {n} records on disk, but the manifest counts "
                           f"{expected.counted}; {expected.redo}")


def release_pool(pool_dir: str) -> Release:
    """Validate a finished sampling-job or import folder fully and encode it (nothing is
    written)."""
    pool_dir = os.path.normpath(pool_dir)
    manifest = _pool_manifest(pool_dir)
    expect = {"sampled": _sampled, "imported": _imported}[_kind(manifest)]
    expected = expect(pool_dir, manifest)
    return encode_release(os.path.basename(pool_dir),
                          _checked_records(pool_dir, expected), expected.provenance)


def _release_manifest(out_dir: str) -> Dict[str, Any]:
    path = os.path.join(out_dir, RELEASE_MANIFEST)
    manifest = release_manifest(out_dir)
    if manifest is None and os.path.exists(path):
        raise ReleaseError(f"{path}: exists but is no pool release manifest "
                           f"(format {RELEASE_FORMAT!r}); choose another --out")
    return manifest or {"format": RELEASE_FORMAT, "version": MANIFEST_VERSION, "pools": {}}


def _manifest_bytes(manifest: Dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode()


def _folder_bytes(out_dir: str, replaced: Sequence[str]) -> int:
    """Bytes of the files that stay in the release folder (hidden temp files excepted)."""
    if not os.path.isdir(out_dir):
        return 0
    keep = [e for e in os.scandir(out_dir) if e.is_file() and not e.name.startswith(".")
            and e.name not in replaced]
    return sum(e.stat().st_size for e in keep)


def write_releases(releases: Sequence[Release], out_dir: str = DEFAULT_OUT) -> Dict[str, Any]:
    """Add (or replace) pools in a release folder: each file, then the manifest, atomically.

    Refuses duplicate names and a folder that would exceed MAX_RELEASE_BYTES in total."""
    names = [r.name for r in releases]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ReleaseError(f"pool name(s) given more than once: {', '.join(dupes)}")
    manifest = _release_manifest(out_dir)
    manifest["pools"].update({r.name: r.entry for r in releases})
    body = _manifest_bytes(manifest)
    replaced = [RELEASE_MANIFEST, *(r.entry["file"] for r in releases)]
    total = _folder_bytes(out_dir, replaced) + len(body) + sum(len(r.data) for r in releases)
    if total > MAX_RELEASE_BYTES:
        raise ReleaseError(f"{out_dir}: the release would hold {total} bytes, over the cap of "
                           f"{MAX_RELEASE_BYTES} bytes (MAX_RELEASE_BYTES); release fewer "
                           "or smaller pools")
    os.makedirs(out_dir, exist_ok=True)
    for name, data in [*((r.entry["file"], r.data) for r in releases), (RELEASE_MANIFEST, body)]:
        atomic_write_bytes(os.path.join(out_dir, name), data)
    return {"out": out_dir, "total_bytes": total,
            "released": {r.name: {k: r.entry[k] for k in ("file", "sha256", "bytes", "records",
                                                           "candidates_per_record")}
                         for r in releases}}


def release_pools(pool_dirs: Sequence[str], out_dir: str = DEFAULT_OUT) -> Dict[str, Any]:
    """Validate every pool first, then write them all: a bad pool leaves the release as it was."""
    releases: List[Release] = [release_pool(d) for d in pool_dirs]
    return write_releases(releases, out_dir)
