"""Importers read ../shared/data in place; counts come from the data's README, not from our code."""
import csv
import shutil

import pytest

from lmcor.data import importers
from lmcor.data.pool import read_pool, write_pool
from lmcor.io_utils import LineCountError, read_lines


@pytest.mark.parametrize("split,examples,refs", [("test", 1847, 4693), ("dev", 1484, 4299)])
def test_e2e_groups_by_cleaned_mr(data_dir, split, examples, refs):
    records = list(importers.import_e2e(str(data_dir), split))
    assert len(records) == examples
    assert sum(len(r["references"]) for r in records) == refs
    assert max(len(r["references"]) for r in records) <= 35
    # First-appearance order and grouping, checked against the raw CSV rows.
    path = data_dir / "e2e_cleaned" / importers.E2E_FILES[split]
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    first_mrs = list(dict.fromkeys(row["mr"] for row in rows))
    assert [r["source"] for r in records] == first_mrs
    assert records[0]["references"] == [row["ref"] for row in rows if row["mr"] == first_mrs[0]]


@pytest.mark.parametrize("split,n", [("test", 747), ("dev", 754)])
def test_jfleg(data_dir, split, n):
    records = list(importers.import_jfleg(str(data_dir), split))
    assert len(records) == n
    assert all(len(r["references"]) == 4 for r in records)
    folder = data_dir / "jfleg" / split
    assert records[5]["source"] == read_lines(folder / f"{split}.src")[5]
    assert records[5]["references"][3] == read_lines(folder / f"{split}.ref3")[5]
    assert records[5]["meta"]["spellchecked_source"] == read_lines(folder / f"{split}.spellchecked.src")[5]


@pytest.mark.parametrize("year,n,n_refs,n_sys", [("wmt21", 1002, 3, 20), ("wmt22", 2037, 2, 9),
                                                 ("wmt23", 557, 1, 12)])
def test_wmt_systems_become_candidates(data_dir, year, n, n_refs, n_sys):
    records = list(importers.import_wmt(str(data_dir), year))
    assert len(records) == n
    assert {len(r["references"]) for r in records} == {n_refs}
    assert {len(r["candidates"]) for r in records} == {n_sys}
    cand = records[-1]["candidates"][0]
    assert cand["decoding"] == "greedy" and cand["temperature"] == 0.0
    folder = data_dir / "wmt_en_de" / year
    system = cand["generator"]
    assert cand["text"] == read_lines(folder / "systems" / f"{system}.de")[-1]
    assert records[-1]["source"] == read_lines(folder / "source.en")[-1]


def test_wmt23_keeps_the_llm_system(data_dir):
    rec = next(importers.import_wmt(str(data_dir), "wmt23"))
    assert "GPT4-5shot" in [c["generator"] for c in rec["candidates"]]


def _copy_wmt(data_dir, tmp_path):
    dst = tmp_path / "wmt_en_de" / "wmt22"
    shutil.copytree(data_dir / "wmt_en_de" / "wmt22", dst)
    return dst


def test_wmt_keeps_empty_lines_and_odd_text_aligned(data_dir, tmp_path):
    dst = _copy_wmt(data_dir, tmp_path)
    # Make segment 3 empty in one system and give segment 4 tabs, quotes and a long line.
    system = dst / "systems" / "PROMT.de"
    lines = read_lines(system)
    lines[3] = ""
    lines[4] = 'Ein "Zitat"\tmit Tab ' + "lang " * 20000 + "\u2028Ende"
    system.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    records = list(importers.import_wmt(str(tmp_path), "wmt22"))
    assert len(records) == 2037
    texts = {c["generator"]: c["text"] for c in records[4]["candidates"]}
    assert texts["PROMT"] == lines[4]
    assert {c["generator"]: c["text"] for c in records[3]["candidates"]}["PROMT"] == ""
    assert records[5]["candidates"][-1]["text"] == lines[5]  # later segments not shifted
    write_pool(records, str(tmp_path / "pool"))
    assert list(read_pool(str(tmp_path / "pool"))) == records


def test_wmt_unequal_files_one_clear_error(data_dir, tmp_path):
    dst = _copy_wmt(data_dir, tmp_path)
    system = dst / "systems" / "Online-B.de"
    lines = read_lines(system)
    system.write_text("".join(line + "\n" for line in lines[:-3]), encoding="utf-8")
    with pytest.raises(LineCountError, match=rf"{system}: has 2034 lines but .*source.en has 2037"):
        list(importers.import_wmt(str(tmp_path), "wmt22"))


def test_e2e_missing_column(tmp_path):
    folder = tmp_path / "e2e_cleaned"
    folder.mkdir()
    (folder / "test-fixed.csv").write_text('meaning,ref\n"a[b]",x\n')
    with pytest.raises(importers.DatasetError, match=r"test-fixed.csv:1: missing column\(s\) \['mr'\]"):
        list(importers.import_e2e(str(tmp_path), "test"))


def test_unknown_split_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="unknown JFLEG split 'train'"):
        list(importers.import_jfleg(str(tmp_path), "train"))
    with pytest.raises(importers.DatasetError, match="dataset folder not found"):
        list(importers.import_jfleg(str(tmp_path), "test"))


def _e2e_dev_copy(data_dir, tmp_path, data: bytes):
    folder = tmp_path / "e2e_cleaned"
    folder.mkdir()
    path = folder / importers.E2E_FILES["dev"]
    path.write_bytes(data)
    return path


def test_e2e_truncated_inside_a_quoted_field(data_dir, tmp_path):
    data = (data_dir / "e2e_cleaned" / importers.E2E_FILES["dev"]).read_bytes()[:5000]
    assert data.endswith(b',"If')  # the cut leaves a reference that was opened, never closed
    path = _e2e_dev_copy(data_dir, tmp_path, data)
    last_line = data.count(b"\n") + 1
    with pytest.raises(importers.DatasetError, match=rf"^{path}:{last_line}: malformed CSV record"):
        list(importers.import_e2e(str(tmp_path), "dev"))


def test_e2e_short_final_row(data_dir, tmp_path):
    lines = (data_dir / "e2e_cleaned" / importers.E2E_FILES["dev"]).read_bytes().split(b"\n")
    # Header, ten whole rows, then an eleventh row cut right after its second field (ref).
    mr_ref = next(csv.reader([lines[11].decode("utf-8")]))[:2]
    short = '"{}","{}"'.format(*mr_ref).encode("utf-8")
    path = _e2e_dev_copy(data_dir, tmp_path, b"\n".join(lines[:11] + [short]) + b"\n")
    with pytest.raises(importers.DatasetError, match=rf"^{path}:12: row has 2 columns, the header 4"):
        list(importers.import_e2e(str(tmp_path), "dev"))


def test_e2e_bad_utf8_names_file_and_line(data_dir, tmp_path):
    lines = (data_dir / "e2e_cleaned" / importers.E2E_FILES["dev"]).read_bytes().split(b"\n")
    lines[7] = lines[7][:3] + b"\xff" + lines[7][3:]
    path = _e2e_dev_copy(data_dir, tmp_path, b"\n".join(lines))
    with pytest.raises(importers.DatasetError, match=rf"^{path}:8: not valid UTF-8 at column 4 "):
        list(importers.import_e2e(str(tmp_path), "dev"))


def test_jfleg_bad_utf8_names_file_and_line(data_dir, tmp_path):
    dst = tmp_path / "jfleg" / "dev"
    shutil.copytree(data_dir / "jfleg" / "dev", dst)
    ref2 = dst / "dev.ref2"
    lines = ref2.read_bytes().split(b"\n")
    column = len(lines[99].decode("utf-8")) + 1  # just past the line's own characters
    lines[99] = lines[99] + b"\xc3("  # a two-byte sequence broken at its second byte
    ref2.write_bytes(b"\n".join(lines))
    with pytest.raises(importers.DatasetError, match=rf"^{ref2}:100: not valid UTF-8 at column {column} "
                                                     r"\(byte 0xc3"):
        list(importers.import_jfleg(str(tmp_path), "dev"))
