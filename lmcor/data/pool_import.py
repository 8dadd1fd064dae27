"""`lmcor pool import`: a shared dataset as a pool folder whose manifest says how it was made.

The folder holds the shards (lmcor.data.pool.write_pool) and a `manifest.json` with the
command's settings (dataset, split, the slice of records kept, the generators kept in order),
the sha256 of every dataset file the importer read, the commit of the code (the one
`lmcor.paths.code_version`, as the sampling job records), the counts, and the sha256 of each
shard. `lmcor pool release` releases such a folder like a sampled one: the shard hashes tell an
edited, added or missing shard from the import, before the records are checked.

The manifest is written once, after every shard is in place, atomically and with "status":
"complete". An import that replaces an earlier one removes the old manifest first, so a killed
import leaves a folder with no manifest (which the release refuses), never shards that a
manifest of other shards vouches for.
"""
import json
import os
import re
import sys
from typing import Any, Dict, Iterable, Iterator, List, Optional

from tqdm import tqdm

from lmcor.paths import MANIFEST, code_version
from lmcor.data.importers import IMPORTERS, source_files
from lmcor.data.pool import PoolStats, pool_files, write_pool
from lmcor.data.pool_schema import PoolError
from lmcor.io_utils import atomic_write_text, file_sha256

IMPORT_FORMAT = "lmcor-pool-import"
IMPORT_VERSION = 1
_SLICE = re.compile(r"^(-?\d+)?:(-?\d+)?$")


class PoolImportError(PoolError):
    """Bad import settings, a record without a chosen generator, or a folder that is no import."""


def parse_records(text: Optional[str]) -> Optional[slice]:
    """`--records=START:END`, a Python slice of the imported records (either end may be left
    out or negative); None when not given."""
    if text is None:
        return None
    match = _SLICE.match(text.replace(" ", ""))
    if not match:
        raise PoolImportError(f"--records={text!r}: expected START:END, a Python slice of the "
                              "imported records such as 279: or 0:279")
    return slice(*(None if g is None else int(g) for g in match.groups()))


def slice_text(kept: slice) -> str:
    return f"{'' if kept.start is None else kept.start}:{'' if kept.stop is None else kept.stop}"


def parse_generators(text: Optional[str]) -> Optional[List[str]]:
    """`--generators=A,B,...`: the candidates to keep, in this order; None when not given."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise PoolImportError(f"--generators={text!r}: an empty generator name")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PoolImportError(f"--generators={text!r}: {', '.join(twice)} given more than once")
    return names


def pick_generators(records: Iterable[Dict[str, Any]],
                    generators: List[str]) -> Iterator[Dict[str, Any]]:
    """Each record with only the candidates of `generators`, in that order; a record without
    exactly one candidate of each is refused (keeping it would change the pool's shape)."""
    for rec in records:
        by_name: Dict[str, List[Dict[str, Any]]] = {}
        for cand in rec["candidates"]:
            by_name.setdefault(cand["generator"], []).append(cand)
        for name in generators:
            found = len(by_name.get(name, ()))
            if found != 1:
                have = ", ".join(by_name) or "none"
                raise PoolImportError(f"record {rec['id']!r} has {found or 'no'} candidate(s) of "
                                      f"generator {name!r} (its generators: {have})")
        yield {**rec, "candidates": [by_name[name][0] for name in generators]}


def _counted(records: Iterable[Dict[str, Any]], stats: PoolStats, desc: str):
    for rec in tqdm(records, desc=desc, unit="ex", file=sys.stderr, mininterval=1.0):
        stats.add(rec)
        yield rec


def read_manifest(pool_dir: str) -> Optional[Dict[str, Any]]:
    """A pool folder's manifest.json (an import's or a sampling job's) as JSON, or None when
    there is none."""
    path = os.path.join(pool_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise PoolError(f"{path}: unreadable manifest ({e})") from e


def _earlier_import(out_dir: str, overwrite: bool) -> Optional[str]:
    """The manifest of an earlier import in `out_dir` that --overwrite lets this one replace;
    refuses a folder that holds another kind of manifest (a sampling job's, a release's)."""
    old = read_manifest(out_dir)
    if old is None:
        return None
    path = os.path.join(out_dir, MANIFEST)
    if not isinstance(old, dict) or old.get("format") != IMPORT_FORMAT:
        raise PoolImportError(f"{path}: exists and is no pool import manifest (a sampling job's "
                              "or a release folder?); choose another --out")
    if not overwrite:
        raise PoolImportError(f"{out_dir}: holds an earlier import; pass --overwrite to "
                              "replace it")
    return path


def import_pool(dataset: str, split: str, out_dir: str, data_dir: str,
                records: Optional[slice] = None, generators: Optional[List[str]] = None,
                shard_size: int = 1000, compress: bool = False,
                overwrite: bool = False) -> Dict[str, Any]:
    """Import `dataset`/`split` into `out_dir` (shards, then the manifest); return the
    manifest's summary: the shards written and the pool's statistics."""
    sources = source_files(dataset, data_dir, split)
    earlier = _earlier_import(out_dir, overwrite)
    imported = list(IMPORTERS[dataset](data_dir, split))
    kept = imported if records is None else imported[records]
    if not kept:
        raise PoolImportError(f"--records={slice_text(records)} keeps none of the "
                              f"{len(imported)} records of {dataset}/{split}")
    if generators is not None:  # every record is checked before the folder is touched
        kept = list(pick_generators(kept, generators))
    if earlier is not None:
        os.unlink(earlier)
    stats = PoolStats()
    paths = write_pool(_counted(kept, stats, f"import {dataset}/{split}"), out_dir,
                       shard_size=shard_size, prefix=f"{dataset}-{split}", compress=compress,
                       overwrite=overwrite)
    stats.files = len(paths)
    manifest = {
        "format": IMPORT_FORMAT, "version": IMPORT_VERSION, "status": "complete",
        "code_version": code_version(),
        "config": {"dataset": dataset, "split": split,
                   "records": None if records is None else slice_text(records),
                   "generators": generators},
        "sources": {name: file_sha256(path) for name, path in sorted(sources.items())},
        "shards": {os.path.basename(p): file_sha256(p) for p in paths},
        "counts": {**stats.to_dict(), "source_records": len(imported)},
    }
    atomic_write_text(os.path.join(out_dir, MANIFEST),
                      json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return {"out": out_dir, "shards": list(manifest["shards"]), **stats.to_dict()}


def check_shards(pool_dir: str, manifest: Dict[str, Any]) -> None:
    """Refuse an import folder whose shards are not the ones its manifest lists (a shard
    added, missing, or edited since the import)."""
    listed = manifest.get("shards")
    if not isinstance(listed, dict) or not listed:
        raise PoolImportError(f"{os.path.join(pool_dir, MANIFEST)}: no 'shards' object "
                              "(an import manifest lists its shards' sha256)")
    on_disk = {os.path.basename(p): p for p in pool_files(pool_dir)}
    for name in sorted(set(listed) | set(on_disk)):
        if name not in on_disk:
            raise PoolImportError(f"{pool_dir}: shard {name} of the import manifest is missing")
        if name not in listed:
            raise PoolImportError(f"{on_disk[name]}: shard not listed in the import manifest")
        actual = file_sha256(on_disk[name])
        if actual != listed[name]:
            raise PoolImportError(f"{on_disk[name]}: sha256 {actual} differs from {listed[name]} "
                                  "in the import manifest (changed since the import)")
