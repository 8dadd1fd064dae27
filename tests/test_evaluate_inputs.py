"""`lmcor evaluate` with what it is given: every bad input refused in one line before anything
is written, records without candidates, the modes of what it writes, and a corrector decode
killed with SIGKILL that a rerun resumes. A real WMT22 slice; a random-weight corrector where
the test is about mechanics, the released E2E corrector where it is about its folder."""
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import gin
import pytest

from lmcor.cli.command_errors import DEBUG_ENV
from lmcor.data.pool import read_pool, write_pool
from lmcor.evaluation import evaluate
from lmcor.io_utils import read_lines
from lmcor.cli import evaluate_command

from _cli import one_line_error
from _evaluate_killed import config as killed_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASED = os.path.join(REPO, "data", "correctors", "e2e")
N = 6


@pytest.fixture(scope="module")
def pool_dir(wmt22_pool):
    return wmt22_pool(N)


def _write_jsonl(path, records, cut=None):
    lines = [json.dumps(r) for r in records]
    if cut is not None:  # the last line stops `cut` characters in
        lines[-1] = lines[-1][:cut]
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _released_copy(tmp_path, change):
    folder = tmp_path / "corrector"
    shutil.copytree(RELEASED, folder)
    change(folder)
    return str(folder)


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def _other_base(folder):
    base = json.loads((folder / "base_weights.json").read_text())
    (folder / "base_weights.json").write_text(json.dumps(dict(base, sha256="0" * 64)))


def _bad_inputs(tmp_path, pool_dir):
    """name -> (extra --gin flags, the error message as a regex), one mistake each."""
    records = list(read_pool(pool_dir))
    bad_field = [records[0], dict(records[1], candidates=[dict(records[1]["candidates"][0],
                                                               decoding="beam")])]
    gz = write_pool(records, str(tmp_path / "gz"), compress=True)[0]
    with open(gz, "rb") as f:
        data = f.read()
    with open(gz, "wb") as f:
        f.write(data[:len(data) // 2])
    (tmp_path / "a_file").write_text("")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    pools = {
        "missing pool": tmp_path / "no_such_pool.jsonl",
        "truncated gzip": gz,
        "bad field": _write_jsonl(tmp_path / "field.jsonl", bad_field),
        "cut JSON line": _write_jsonl(tmp_path / "cut.jsonl", records[:2], cut=30),
    }
    return {
        "missing pool": ([f"--gin.EVAL_POOL={pools['missing pool']}"],
                         r".*no_such_pool\.jsonl: no such pool file or directory"),
        "truncated gzip": ([f"--gin.EVAL_POOL={gz}"],
                           r".*\.jsonl\.gz:\d+: field '<file>': unreadable \(Compressed file "
                           r"ended before the end-of-stream marker was reached\)"),
        "bad field": ([f"--gin.EVAL_POOL={pools['bad field']}"],
                      r".*field\.jsonl:2: field 'candidates\[0\]\.decoding': must be one of "
                      r"\['greedy', 'sample'\], got 'beam'"),
        "cut JSON line": ([f"--gin.EVAL_POOL={pools['cut JSON line']}"],
                          r".*cut\.jsonl:2: field '<json>': invalid JSON: Unterminated string "
                          r"starting at column \d+ \(truncated line\?\)"),
        "no greedy candidate": ([f"--gin.EVAL_POOL={pool_dir}",
                                 "--gin.EVAL_GREEDY_GENERATOR=GPT-5"],
                                r".*\.jsonl:1: field 'candidates': no greedy candidate from "
                                r"evaluation.greedy_generator='GPT-5'"),
        "EVAL_DIR under a file": ([f"--gin.EVAL_POOL={pool_dir}",
                                   f"--gin.EVAL_DIR={tmp_path / 'a_file' / 'eval'}"],
                                  r"EVAL_DIR='.*a_file/eval': .*a_file is a file, not a folder"),
        "unknown task": (["--gin.MIXTURE_OR_TASK_NAME=wmt_lmcr"],
                         r"evaluation.task='wmt_lmcr' \(MIXTURE_OR_TASK_NAME\): no such task or "
                         r"mixture; did you mean 'wmt_lmcor'\?"),
        "run without checkpoints": ([f"--gin.EVAL_POOL={pool_dir}",
                                     f"--gin.LMCOR_DIR={tmp_path / 'run'}"],
                                    r".*run/checkpoints: no finished checkpoint"),
        "adapter sha256": ([f"--gin.EVAL_POOL={pool_dir}", "--gin.LMCOR_DIR=" + _released_copy(
            tmp_path / "sha", lambda d: _flip_a_byte(d / "adapter.safetensors.xz"))],
            r".*adapter\.safetensors\.xz: sha256 differs from the one in adapter\.json .*"),
        "no task_vocab.json": ([f"--gin.EVAL_POOL={pool_dir}", "--gin.LMCOR_DIR=" + _released_copy(
            tmp_path / "vocab", lambda d: (d / "task_vocab.json").unlink())],
            r".*task_vocab\.json: no such file \(the run's config\.gin sets gemma_model\.vocab = "
            r"'task'\)"),
        "other base weights": ([f"--gin.EVAL_POOL={pool_dir}", "--gin.LMCOR_DIR=" + _released_copy(
            tmp_path / "base", _other_base)],
            r".*corrector was trained on base weights gemma-3-270m-q4_k_m\.gguf \(sha256 "
            r"000000000000\.\.\.\) but the configured base is .*"),
    }


def test_bad_inputs_are_one_line_before_anything_is_written(pool_dir, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "0")  # no traceback
    cases = _bad_inputs(tmp_path, pool_dir)
    out = tmp_path / "eval"
    for name, (flags, message) in cases.items():
        argv = ["--gin_file=gin/runs/evaluate.gin", "--gin_file=gin/tasks/wmt.gin",
                f"--gin.EVAL_DIR={out}", *flags]
        try:
            code = evaluate_command.main(argv)
        finally:
            gin.clear_config()
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        assert re.fullmatch(message, one_line_error(err, "evaluate")), (name, err)
        assert not out.exists(), name


def test_records_without_candidates(pool_dir, tiny_lmcor_dir, tmp_path):
    """docs/pool_format.md: `candidates` may be empty. The pool rows give such a record an empty
    output, the corrector reads its source alone, and results.json counts them. What the
    evaluation writes gets the modes umask 022 gives."""
    records = list(read_pool(pool_dir))
    records[2] = dict(records[2], candidates=[])
    pool = write_pool(records, str(tmp_path / "pool"))[0]
    out = tmp_path / "eval"
    umask = os.umask(0o022)
    try:
        results = evaluate.evaluate(evaluate.evaluation(
            task="wmt22", out_dir=str(out), pool=pool, lmcor_dir=tiny_lmcor_dir,
            greedy_generator="Online-A", max_references=1, bootstrap_samples=20))
    finally:
        os.umask(umask)
    assert results["records_without_candidates"] == 1
    assert results["notes"][0].startswith("1 of 6 records have no candidates")
    rows = {r["name"].split(" (")[0]: read_lines(out / r["predictions"]) for r in results["rows"]}
    assert set(rows) == {"LLM greedy", "LLM sample", "best single system", "MBR rerank", "oracle",
                         "LMCor"}
    for name, lines in rows.items():
        assert len(lines) == N and (lines[2] == "") == (name != "LMCor"), name
    assert all(line for line in rows["LLM greedy"][:2] + rows["LLM greedy"][3:])

    from lmcor.inference.corrector import Corrector

    gin.clear_config()
    corrector = Corrector.from_model_dir(tiny_lmcor_dir)
    assert corrector.build_input(records[2]) == f"source: {records[2]['source']}"
    assert corrector.build_input(records[1]).startswith(f"source: {records[1]['source']} <sep> "
                                                        "candidates: ")
    written = [out / "results.json", out / "results.md", *sorted((out / "predictions").iterdir())]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == \
        {p.name: "0o644" for p in written}


def test_kill_9_during_the_decode_then_a_rerun_decodes_only_the_missing_batches(
        pool_dir, tiny_lmcor_dir, tmp_path, monkeypatch):
    from lmcor.inference.corrector import Corrector

    whole = evaluate.evaluate(killed_config(str(tmp_path / "whole"), pool_dir, tiny_lmcor_dir))
    assert [r["decoded_batches"] for r in whole["rows"] if r["name"] == "LMCor"] == [4]

    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "_evaluate_killed.py"),
                           str(out), pool_dir, tiny_lmcor_dir, "3"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    saved = json.loads((out / "predictions" / "lmcor.partial.json").read_text())
    assert len(saved["outputs"]) == 2 and not (out / "results.json").exists()

    decode_ids, calls = Corrector.decode_ids, []

    def counted(self, *args, **kwargs):
        calls.append(1)
        return decode_ids(self, *args, **kwargs)

    monkeypatch.setattr(Corrector, "decode_ids", counted)
    again = evaluate.evaluate(killed_config(str(out), pool_dir, tiny_lmcor_dir))
    [row] = [r for r in again["rows"] if r["name"] == "LMCor"]
    assert len(calls) == 2 and (row["decoded_batches"], row["resumed_batches"]) == (2, 2)
    assert (out / "predictions" / "lmcor.txt").read_bytes() == \
        (tmp_path / "whole" / "predictions" / "lmcor.txt").read_bytes()
    assert not (out / "predictions" / "lmcor.partial.json").exists()


def test_a_released_corrector_in_a_relative_folder_logs_no_error(monkeypatch, caplog):
    """gin looked a relative config.gin up under each of its search folders first, and logged
    an ERROR for each that lacked it, before the run went on normally."""
    from lmcor.inference.run_dir import check_model_dir

    monkeypatch.chdir(REPO)
    try:
        with caplog.at_level(logging.INFO):
            check_model_dir(os.path.relpath(RELEASED, REPO))
    finally:
        gin.clear_config()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
