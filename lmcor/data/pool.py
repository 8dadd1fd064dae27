"""Candidate pools: sharded, schema-checked JSONL (optionally gzip), streamed line by line.

One record per input: its source, its references and the candidates one or more generators
produced for it. Every record read or written passes `pool_schema.validate_record` (the schema of
docs/pool_format.md). Readers never hold a whole file in memory (pools can have millions of
lines); only the ids seen so far are kept, to refuse duplicates across shards.
"""
import collections
import dataclasses
import glob
import gzip
import json
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from lmcor.paths import MANIFEST, REPO_ROOT
from lmcor.data.pool_schema import PoolError, fail, validate_record
from lmcor.data.text_files import TextError, text_lines
from lmcor.io_utils import _fsync_dir, atomic_open, file_sha256

SHARD_SUFFIXES = (".jsonl", ".jsonl.gz")
# A folder of released pools (data/pools/, lmcor.data.pool_release) is told apart from a
# sampling job's folder, which has a manifest.json too, by this marker in its manifest.
RELEASE_MANIFEST = MANIFEST
RELEASE_FORMAT = "lmcor-pool-release"


def _words(text: str) -> int:
    return len(text.split())


@dataclasses.dataclass
class PoolStats:
    """Counts gathered while streaming a pool (pass one to `read_pool` to fill it)."""

    files: int = 0
    examples: int = 0
    references: int = 0
    candidates: int = 0
    empty_candidates: int = 0
    without_candidates: int = 0  # examples with an empty candidate list (allowed)
    source_words: int = 0
    reference_words: int = 0
    candidate_words: int = 0
    candidates_per_generator: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    empty_per_generator: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, rec: Dict[str, Any]) -> None:
        self.examples += 1
        self.references += len(rec["references"])
        self.source_words += _words(rec["source"])
        self.reference_words += sum(_words(r) for r in rec["references"])
        self.without_candidates += not rec["candidates"]
        for cand in rec["candidates"]:
            self.candidates += 1
            self.candidates_per_generator[cand["generator"]] += 1
            self.candidate_words += _words(cand["text"])
            if not cand["text"].strip():
                self.empty_candidates += 1
                self.empty_per_generator[cand["generator"]] += 1

    def to_dict(self) -> Dict[str, Any]:
        def mean(total: int, count: int) -> float:
            return round(total / count, 3) if count else 0.0

        return {
            "files": self.files, "examples": self.examples, "references": self.references,
            "candidates": self.candidates, "empty_candidates": self.empty_candidates,
            "examples_without_candidates": self.without_candidates,
            "candidates_per_generator": dict(sorted(self.candidates_per_generator.items())),
            "empty_candidates_per_generator": dict(sorted(self.empty_per_generator.items())),
            "mean_source_words": mean(self.source_words, self.examples),
            "mean_reference_words": mean(self.reference_words, self.references),
            "mean_candidate_words": mean(self.candidate_words, self.candidates),
            "mean_references_per_example": mean(self.references, self.examples),
            "mean_candidates_per_example": mean(self.candidates, self.examples),
        }


def is_shard(path: str) -> bool:
    name = os.path.basename(path)
    return name.endswith(SHARD_SUFFIXES) and not name.startswith(".")


def pool_files(path_or_dir: str) -> List[str]:
    """The shard files of a pool: the file itself, or a directory's shards in sorted order."""
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "*")) if is_shard(f))
        if not files:
            raise PoolError(f"{path}: no pool shards (*.jsonl or *.jsonl.gz) in this directory")
        return files
    if not os.path.exists(path):
        raise PoolError(f"{path}: no such pool file or directory")
    return [path]


def _file_lines(path: str) -> Iterator[Tuple[int, str]]:
    # JSON escapes every control character, so only "\n" can end a record.
    lineno = 0
    try:
        for lineno, line in text_lines(path):
            yield lineno, line
    except TextError as e:
        raise PoolError(f"{path}:{e.lineno}: field '<file>': {e.problem}") from None
    except (EOFError, OSError) as e:
        raise PoolError(f"{path}:{lineno + 1}: field '<file>': unreadable ({e})") from e


def _json_problem(e: json.JSONDecodeError) -> str:
    """json's message with its column: some messages end in "at" and expect a position after
    them ("Unterminated string starting at"), the others take one as "... at column N"."""
    return f"{e.msg} column {e.colno}" if e.msg.endswith(" at") else f"{e.msg} at column {e.colno}"


class _DuplicateKeys:
    """object_pairs_hook that builds dicts as json does and remembers any with a repeated key
    (json itself keeps the last value silently)."""

    def __init__(self):
        self.found: List[Tuple[Dict[str, Any], str]] = []

    def __call__(self, pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):  # the cheap test on every object; the key only when needed
            keys = [key for key, _ in pairs]
            self.found.append((obj, next(k for i, k in enumerate(keys) if k in keys[:i])))
        return obj


def _path_to(target: Any, value: Any, path: str = "") -> Optional[str]:
    """Dotted field path (e.g. "candidates[1]") of the object `target` inside `value`."""
    if value is target:
        return path
    if isinstance(value, dict):
        children = ((f"{path}.{key}" if path else key, child) for key, child in value.items())
    elif isinstance(value, list):
        children = ((f"{path}[{i}]", child) for i, child in enumerate(value))
    else:
        return None
    for sub, child in children:
        found = _path_to(target, child, sub)
        if found is not None:
            return found
    return None


def _read_file(path: str, seen: Dict[str, str], stats: Optional[PoolStats]) -> Iterator[Dict[str, Any]]:
    count = 0
    duplicates = _DuplicateKeys()
    decoder = json.JSONDecoder(object_pairs_hook=duplicates)  # json.loads would build one a line
    for lineno, line in _file_lines(path):
        where = f"{path}:{lineno}"
        if not line.strip():
            fail(where, "<line>", "blank line (one JSON record per line expected)")
        # Without its "\n": an error at the end of a truncated line would otherwise be placed
        # at column 1 of a line 2 that does not exist.
        text = line[:-1] if line.endswith("\n") else line
        duplicates.found.clear()
        try:
            raw = decoder.decode(text)
        except json.JSONDecodeError as e:
            fail(where, "<json>", f"invalid JSON: {_json_problem(e)} (truncated line?)")
        if duplicates.found:
            obj, key = duplicates.found[0]
            parent = _path_to(obj, raw)
            fail(where, f"{parent}.{key}" if parent else key,
                 f"duplicate key {key!r} (a JSON reader keeps only the last value)")
        rec = validate_record(raw, where)
        if rec["id"] in seen:
            fail(where, "id", f"duplicate id {rec['id']!r} (first seen at {seen[rec['id']]})")
        seen[rec["id"]] = where
        if stats is not None:
            stats.add(rec)
        count += 1
        yield rec
    if count == 0:
        raise PoolError(f"{path}:0: field '<file>': empty pool file (no records)")


def resolve_pool_path(path: str, root: Optional[str] = None) -> str:
    """A pool (folder or file) as given, else relative to `root` (default: the repository root,
    where Gin files are found too), so configs can name `data/pools/<name>.jsonl.gz` and work
    from any directory."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    in_repo = os.path.join(root or REPO_ROOT, path)
    return in_repo if os.path.exists(in_repo) else path  # missing: read_pool names it as given


def release_manifest(directory: str) -> Optional[Dict[str, Any]]:
    """The release manifest of `directory` ({"format", "pools": {name: entry}}), or None when
    the folder is no release (no manifest.json, or a sampling job's manifest)."""
    path = os.path.join(directory, RELEASE_MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PoolError(f"{path}:0: field '<file>': unreadable ({e})") from e
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        # A broken release manifest (a merge conflict, say) must not switch checking off.
        if RELEASE_FORMAT in text:
            raise PoolError(f"{path}:{e.lineno}: field '<json>': invalid release manifest "
                            f"({e.msg})") from e
        return None
    if not isinstance(body, dict) or body.get("format") != RELEASE_FORMAT:
        return None
    if not isinstance(body.get("pools"), dict):
        raise PoolError(f"{path}:0: field 'pools': expected an object of released pools")
    return body


def verify_released_file(path: str, manifest: Dict[str, Any]) -> None:
    """Refuse a released pool file that its folder's manifest does not list, or whose bytes
    are not the ones released (an edited, truncated or half-merged file)."""
    where = os.path.join(os.path.dirname(path), RELEASE_MANIFEST)
    name = os.path.basename(path)
    entries = [e for e in manifest["pools"].values()
               if isinstance(e, dict) and e.get("file") == name]
    if not entries:
        raise PoolError(f"{path}:0: field '<file>': not listed in {where}; release pools with "
                        "`lmcor pool release POOL_DIR --out=DIR`")
    expected, actual = entries[0].get("sha256"), file_sha256(path)
    if actual != expected:
        raise PoolError(f"{path}:0: field '<file>': sha256 {actual} differs from {expected} "
                        f"recorded in {where}; restore the released file (git checkout) or "
                        "release the pool again")


def read_pool(path_or_dir: str, stats: Optional[PoolStats] = None,
              locations: Optional[Dict[str, str]] = None) -> Iterator[Dict[str, Any]]:
    """Stream validated records from a pool file or a directory of shards (sorted order).

    Raises PoolError naming file, line and field on the first malformed record, on an empty
    file and on an id already seen in this pool. A file in a release folder (data/pools/) is
    checked against its manifest's sha256 first. Pass a PoolStats to collect counts, and a
    dict as `locations` to receive each record's "FILE:LINE" by id (for later errors).
    """
    seen: Dict[str, str] = {} if locations is None else locations
    manifests: Dict[str, Optional[Dict[str, Any]]] = {}
    for path in pool_files(path_or_dir):
        folder = os.path.dirname(os.path.abspath(path))
        if folder not in manifests:
            manifests[folder] = release_manifest(folder)
        if manifests[folder] is not None:
            verify_released_file(path, manifests[folder])
        if stats is not None:
            stats.files += 1
        yield from _read_file(path, seen, stats)


def pool_stats(path_or_dir: str) -> PoolStats:
    stats = PoolStats()
    for _ in read_pool(path_or_dir, stats):
        pass
    return stats


def _shard_path(out_dir: str, prefix: str, index: int, compress: bool) -> str:
    return os.path.join(out_dir, f"{prefix}-{index:05d}.jsonl" + (".gz" if compress else ""))


def _write_shard(path: str, lines: List[str], compress: bool) -> None:
    with atomic_open(path, "wb") as raw:
        # mtime=0 keeps the gzip bytes a pure function of the records (reproducible shards).
        stream = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if compress else raw
        stream.write("".join(lines).encode("utf-8"))
        if compress:
            stream.close()


def _existing_shards(out_dir: str, prefix: str) -> List[str]:
    return sorted(f for f in glob.glob(os.path.join(out_dir, f"{prefix}-*")) if is_shard(f))


def _missing_dirs(path: str) -> List[str]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def write_pool(records: Iterable[Dict[str, Any]], out_dir: str, shard_size: int = 1000,
               prefix: str = "pool", compress: bool = False, overwrite: bool = False) -> List[str]:
    """Validate and write records as `{prefix}-NNNNN.jsonl[.gz]` shards; return their paths.

    All or nothing: shards are written under hidden names (which readers skip) and renamed into
    place only once every record has passed, so a bad record, a failing importer or a full disk
    leaves the folder as it was, and a folder this call created is removed again. Existing
    shards with this prefix are refused unless `overwrite`, in which case the stale ones not
    rewritten are removed at the end.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    created = _missing_dirs(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    old = _existing_shards(out_dir, prefix)
    if old and not overwrite:
        raise FileExistsError(f"{out_dir} already holds {len(old)} '{prefix}' shards "
                              f"(e.g. {os.path.basename(old[0])}); pass overwrite=True (--overwrite)")
    written: List[str] = []
    staged: List[str] = []
    seen = set()
    buffer: List[str] = []

    def flush() -> None:
        written.append(_shard_path(out_dir, prefix, len(written), compress))
        staged.append(os.path.join(out_dir, f".{os.path.basename(written[-1])}.partial"))
        _write_shard(staged[-1], buffer, compress)
        buffer.clear()

    try:
        for n, rec in enumerate(records):
            rec = validate_record(rec, f"record {n}")
            if rec["id"] in seen:
                fail(f"record {n}", "id", f"duplicate id {rec['id']!r}")
            seen.add(rec["id"])
            buffer.append(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")
            if len(buffer) == shard_size:
                flush()
        if not buffer and not written:
            raise PoolError(f"{out_dir}: no records to write (an empty pool is not a pool)")
        if buffer:
            flush()
    except BaseException:
        for path in staged:
            if os.path.exists(path):
                os.unlink(path)
        for folder in created:
            try:
                os.rmdir(folder)
            except OSError:
                break  # not empty: someone else writes there too
        raise
    for path, final in zip(staged, written):
        os.replace(path, final)
    for stale in set(old) - set(written):
        os.unlink(stale)
    _fsync_dir(out_dir)
    return written
