"""Turn the public evaluation sets in ../shared/data into pool records, reading them in place.

Each importer yields records in the pool schema (lmcor/data/pool_schema.py) in the data's own order.
`data_dir` may be the shared data root or the dataset's own folder.
"""
import csv
import os
import sys
from typing import Any, Dict, Iterator, List

from lmcor.data.pool_schema import PoolError
from lmcor.data.text_files import TextError, read_aligned_text, text_lines
from lmcor.io_utils import read_lines  # noqa: F401  (used via this module by backends)

E2E_FILES = {"dev": "devel-fixed.no-ol.csv", "test": "test-fixed.csv"}
JFLEG_SPLITS = ("dev", "test")
WMT_YEARS = ("wmt21", "wmt22", "wmt23")
JFLEG_REFS = 4
# Each dataset's folder below the shared data root (WMT: the language pair the CLI imports).
DATASET_FOLDERS = {"e2e": "e2e_cleaned", "jfleg": "jfleg", "wmt": "wmt_en_de"}


class DatasetError(PoolError):
    """Raw dataset files are missing or inconsistent (names the file and what is wrong)."""


def _dataset_dir(data_dir: str, name: str) -> str:
    # Accept both the shared root and the dataset folder itself.
    for cand in (os.path.join(data_dir, name), data_dir):
        if os.path.basename(os.path.normpath(cand)) == os.path.basename(name) and os.path.isdir(cand):
            return cand
    raise DatasetError(f"{os.path.join(data_dir, name)}: dataset folder not found")


def _check_choice(value: str, choices, what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(choices)}")


def _read_aligned(paths: List[str]) -> List[List[str]]:
    try:
        return read_aligned_text(paths)
    except TextError as e:
        raise DatasetError(str(e)) from None


def _csv_records(path: str) -> Iterator[tuple]:
    """(first physical line, fields) of each CSV record of `path`; blank lines are skipped.

    The csv module reads lines split on "\\n" alone, so its line count is the file's. In strict
    mode it refuses a quoted field still open at the end of the file: a truncated file, whose
    last field would otherwise come back cut short without a word.
    """
    reader = csv.reader((line for _, line in text_lines(path)), strict=True)
    while True:
        first = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DatasetError(f"{path}:{first}: malformed CSV record starting on this line ({e}); "
                               "a quoted field left open means a truncated file") from None
        except TextError as e:
            raise DatasetError(str(e)) from None
        if fields:
            yield first, fields


def _e2e_rows(path: str) -> Iterator[tuple]:
    # The MRs and references hold commas and quotes: the csv module handles the quoting.
    csv.field_size_limit(sys.maxsize)
    records = _csv_records(path)
    header = next(records, (1, []))[1]
    missing = {"mr", "ref"} - set(header)
    if missing:
        raise DatasetError(f"{path}:1: missing column(s) {sorted(missing)} in the header")
    for lineno, fields in records:
        if len(fields) != len(header):
            raise DatasetError(f"{path}:{lineno}: row has {len(fields)} columns, the header "
                               f"{len(header)} (a short last row means a truncated file)")
        row = dict(zip(header, fields))
        yield row["mr"], row["ref"], row.get("orig_mr")


def _e2e_path(data_dir: str, split: str) -> str:
    _check_choice(split, E2E_FILES, "E2E split")
    path = os.path.join(_dataset_dir(data_dir, DATASET_FOLDERS["e2e"]), E2E_FILES[split])
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: file not found")
    return path


def import_e2e(data_dir: str, split: str) -> Iterator[Dict[str, Any]]:
    """E2E NLG (cleaned MRs): one multi-reference record per distinct cleaned `mr`.

    Records follow the order of each MR's first appearance in the CSV.
    """
    path = _e2e_path(data_dir, split)
    groups: Dict[str, Dict[str, list]] = {}
    for mr, ref, orig_mr in _e2e_rows(path):
        group = groups.setdefault(mr, {"refs": [], "orig": []})
        group["refs"].append(ref)
        if orig_mr is not None and orig_mr not in group["orig"]:
            group["orig"].append(orig_mr)
    for i, (mr, group) in enumerate(groups.items()):  # dicts keep first-appearance order
        yield {"id": f"e2e-{split}-{i:05d}", "source": mr, "references": group["refs"],
               "candidates": [],
               "meta": {"dataset": "e2e_cleaned", "split": split, "orig_mrs": group["orig"]}}


def _jfleg_paths(data_dir: str, split: str) -> List[str]:
    """The source, the references, then the spell-checked source where the split has one."""
    _check_choice(split, JFLEG_SPLITS, "JFLEG split")
    folder = os.path.join(_dataset_dir(data_dir, DATASET_FOLDERS["jfleg"]), split)
    paths = [os.path.join(folder, f"{split}.src")]
    paths += [os.path.join(folder, f"{split}.ref{k}") for k in range(JFLEG_REFS)]
    spell = os.path.join(folder, f"{split}.spellchecked.src")
    return paths + ([spell] if os.path.isfile(spell) else [])


def import_jfleg(data_dir: str, split: str) -> Iterator[Dict[str, Any]]:
    """JFLEG: the original sentence as source, its four human corrections as references."""
    paths = _jfleg_paths(data_dir, split)
    has_spell = len(paths) > 1 + JFLEG_REFS
    columns = _read_aligned(paths)
    for i, row in enumerate(zip(*columns)):
        meta = {"dataset": "jfleg", "split": split}
        if has_spell:
            meta["spellchecked_source"] = row[-1]
        yield {"id": f"jfleg-{split}-{i:04d}", "source": row[0],
               "references": list(row[1:1 + JFLEG_REFS]), "candidates": [], "meta": meta}


def _wmt_files(folder: str, prefix: str, suffix: str) -> List[tuple]:
    names = sorted(n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith(suffix)
                   and not n.startswith("."))
    return [(n[len(prefix):-len(suffix)], os.path.join(folder, n)) for n in names]


def _wmt_paths(data_dir: str, year: str, source_lang: str = "en", target_lang: str = "de"):
    """The source file and the (name, path) of each reference and each system's output."""
    _check_choice(year, WMT_YEARS, "WMT year")
    folder = os.path.join(_dataset_dir(data_dir, f"wmt_{source_lang}_{target_lang}"), year)
    refs = _wmt_files(folder, "reference.", f".{target_lang}")
    sys_dir = os.path.join(folder, "systems")
    systems = _wmt_files(sys_dir, "", f".{target_lang}") if os.path.isdir(sys_dir) else []
    if not refs:
        raise DatasetError(f"{folder}: no reference.*.{target_lang} files")
    return os.path.join(folder, f"source.{source_lang}"), refs, systems


def _wmt_read_order(source: str, refs: List[tuple], systems: List[tuple]) -> List[str]:
    return [source, *(p for _, p in refs), *(p for _, p in systems)]


def import_wmt(data_dir: str, year: str, source_lang: str = "en",
               target_lang: str = "de") -> Iterator[Dict[str, Any]]:
    """WMT general/news test set: every system's translation becomes a (greedy) candidate."""
    source, refs, systems = _wmt_paths(data_dir, year, source_lang, target_lang)
    columns = _read_aligned(_wmt_read_order(source, refs, systems))
    n_refs = len(refs)
    meta = {"dataset": year, "langpair": f"{source_lang}-{target_lang}",
            "reference_names": [name for name, _ in refs]}
    for i, row in enumerate(zip(*columns)):
        cands = [{"text": text, "generator": name, "prompt_id": None, "decoding": "greedy",
                  "temperature": 0.0, "logprob": None}
                 for (name, _), text in zip(systems, row[1 + n_refs:])]
        yield {"id": f"{year}-{source_lang}{target_lang}-{i:05d}", "source": row[0],
               "references": list(row[1:1 + n_refs]), "candidates": cands, "meta": dict(meta)}


IMPORTERS = {"e2e": import_e2e, "jfleg": import_jfleg, "wmt": import_wmt}


_PATHS = {"e2e": lambda data_dir, split: [_e2e_path(data_dir, split)],
          "jfleg": _jfleg_paths,
          "wmt": lambda data_dir, year: _wmt_read_order(*_wmt_paths(data_dir, year))}


def source_files(dataset: str, data_dir: str, split: str) -> Dict[str, str]:
    """The files `IMPORTERS[dataset](data_dir, split)` reads, by their path below the data root
    (e.g. "wmt_en_de/wmt23/source.en"): the same names whether `data_dir` is the root or the
    dataset's own folder."""
    root = os.path.dirname(_dataset_dir(data_dir, DATASET_FOLDERS[dataset]))
    return {os.path.relpath(p, root): p for p in _PATHS[dataset](data_dir, split)}
