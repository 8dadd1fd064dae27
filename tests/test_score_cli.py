"""`lmcor score` and `lmcor pool` on the real data: published numbers and sacreBLEU's own scores."""
import json
import shutil

import pytest
import sacrebleu

from lmcor import cli
from lmcor.io_utils import read_lines

WMT22_SYSTEMS = ["JDExploreAcademy", "Lan-Bridge", "Online-A", "Online-B", "Online-G", "Online-W",
                 "Online-Y", "OpenNMT", "PROMT"]


def _run(capsys, argv):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _jfleg_flags(data_dir, split, hyp):
    folder = data_dir / "jfleg" / split
    refs = [f"--ref={folder / f'{split}.ref{k}'}" for k in range(4)]
    return ["score", "--metric=gleu", f"--hyp={hyp or folder / f'{split}.src'}",
            f"--src={folder / f'{split}.src'}", *refs]


@pytest.mark.parametrize("split,published", [("test", 40.54), ("dev", 38.21)])
def test_gleu_of_unedited_source_matches_published(data_dir, capsys, split, published):
    rc, out, _ = _run(capsys, _jfleg_flags(data_dir, split, None))
    assert rc == 0
    assert json.loads(out)["gleu"] == pytest.approx(published, abs=0.1)


def test_gleu_of_a_reference_beats_the_source(data_dir, capsys):
    ref0 = data_dir / "jfleg" / "test" / "test.ref0"
    rc, out, _ = _run(capsys, _jfleg_flags(data_dir, "test", ref0))
    assert rc == 0 and json.loads(out)["gleu"] > 50


@pytest.mark.parametrize("system", WMT22_SYSTEMS)
def test_bleu_chrf_equal_sacrebleu_on_wmt22(data_dir, capsys, system):
    folder = data_dir / "wmt_en_de" / "wmt22"
    hyp, ref = folder / "systems" / f"{system}.de", folder / "reference.A.de"
    hyps, refs = read_lines(hyp), [read_lines(ref)]
    expected = {"bleu": sacrebleu.corpus_bleu(hyps, refs).score,
                "chrf": sacrebleu.corpus_chrf(hyps, refs).score}
    for metric, value in expected.items():
        rc, out, _ = _run(capsys, ["score", f"--metric={metric}", f"--hyp={hyp}", f"--ref={ref}"])
        assert rc == 0
        assert round(json.loads(out)[metric], 2) == round(value, 2)


def test_paired_test_flags(data_dir, capsys):
    folder = data_dir / "wmt_en_de" / "wmt23"
    rc, out, _ = _run(capsys, ["score", "--metric=bleu", f"--hyp={folder / 'systems' / 'GPT4-5shot.de'}",
                               f"--ref={folder / 'reference.A.de'}", "--bootstrap=10",
                               f"--baseline={folder / 'systems' / 'ONLINE-W.de'}"])
    result = json.loads(out)
    assert rc == 0 and set(result) == {"bleu", "ci95", "baseline", "delta", "p_value"}
    assert result["ci95"][0] <= result["bleu"] <= result["ci95"][1]
    assert result["delta"] == pytest.approx(result["bleu"] - result["baseline"], abs=1e-3)
    # Without resamples the baseline is still scored, as on its own, and compared.
    rc, out, _ = _run(capsys, ["score", "--metric=bleu", f"--hyp={folder / 'systems' / 'GPT4-5shot.de'}",
                               f"--ref={folder / 'reference.A.de'}",
                               f"--baseline={folder / 'systems' / 'ONLINE-W.de'}"])
    plain = json.loads(out)
    alone = sacrebleu.corpus_bleu(read_lines(folder / "systems" / "ONLINE-W.de"),
                                  [read_lines(folder / "reference.A.de")]).score
    assert rc == 0 and set(plain) == {"bleu", "baseline", "delta"}
    assert plain["bleu"] == result["bleu"] and plain["baseline"] == pytest.approx(alone, abs=1e-3)
    assert plain["delta"] == pytest.approx(plain["bleu"] - plain["baseline"], abs=1e-3)


def test_unaligned_files_and_missing_source_are_clear_errors(data_dir, tmp_path, capsys):
    ref = data_dir / "jfleg" / "test" / "test.ref0"
    short = tmp_path / "short.txt"
    short.write_text("one line\n")
    rc, out, err = _run(capsys, ["score", "--metric=bleu", f"--hyp={short}", f"--ref={ref}"])
    assert rc == 2 and out == ""
    assert f"{ref}: has 747 lines but {short} has 1" in err
    rc, _, err = _run(capsys, ["score", "--metric=gleu", f"--hyp={ref}", f"--ref={ref}"])
    assert rc == 2 and "needs --src" in err


def test_pool_import_and_stats(data_dir, tmp_path, capsys):
    out_dir = tmp_path / "pool"
    rc, out, _ = _run(capsys, ["pool", "import", "--dataset=wmt", "--split=wmt22", f"--out={out_dir}",
                               f"--data_dir={data_dir}", "--gzip", "--shard_size=1000"])
    imported = json.loads(out)
    assert rc == 0 and imported["shards"] == [f"wmt-wmt22-0000{k}.jsonl.gz" for k in range(3)]
    rc, out, _ = _run(capsys, ["pool", "stats", str(out_dir)])
    stats = json.loads(out)
    assert rc == 0
    assert (stats["examples"], stats["references"], stats["candidates"]) == (2037, 2 * 2037, 9 * 2037)
    assert stats["candidates_per_generator"] == {name: 2037 for name in WMT22_SYSTEMS}
    assert stats["empty_candidates"] == 0 and stats["mean_source_words"] > 0


def test_pool_import_e2e_counts_and_stats_errors(data_dir, tmp_path, capsys):
    rc, out, _ = _run(capsys, ["pool", "import", "--dataset=e2e", "--split=test",
                               f"--out={tmp_path / 'e2e'}", f"--data_dir={data_dir}"])
    assert rc == 0 and (json.loads(out)["examples"], json.loads(out)["references"]) == (1847, 4693)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "source": "s"}\n')
    rc, out, err = _run(capsys, ["pool", "stats", str(bad)])
    assert rc == 2 and f"{bad}:1: field 'references': missing required field" in err


@pytest.mark.parametrize("metric", ["bleu", "chrf", "ter", "rouge", "gleu"])
def test_empty_files_are_one_clear_error(tmp_path, capsys, metric):
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("")
    ref.write_text("")
    src = [f"--src={ref}"] if metric == "gleu" else []
    rc, out, err = _run(capsys, ["score", f"--metric={metric}", f"--hyp={hyp}", f"--ref={ref}", *src])
    assert (rc, out) == (2, "")
    assert err == f"lmcor score: error: {hyp}: no lines to score (empty file)\n"


def test_bad_flags_are_one_clear_error(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("a small test line\n")
    flags = [f"--hyp={text}", f"--ref={text}"]
    rc, out, err = _run(capsys, ["score", "--metric=bleu", "--tokenize=nope", *flags])
    assert (rc, out) == (2, "") and err.count("\n") == 1
    assert "--tokenize 'nope'" in err and all(name in err for name in ("13a", "intl", "char", "none"))
    rc, out, err = _run(capsys, ["score", "--metric=bleu", "--bootstrap=-5", *flags])
    assert (rc, out) == (2, "") and err.count("\n") == 1 and "--bootstrap must be >= 0, got -5" in err
    # sacreBLEU's TER and chrF take no tokenizer: the flag must not be dropped or crash them.
    for metric in ("ter", "chrf"):
        rc, out, err = _run(capsys, ["score", f"--metric={metric}", "--tokenize=13a", *flags])
        assert (rc, out) == (2, "") and err.count("\n") == 1 and "--metric=bleu only" in err


def test_non_utf8_file_named_with_line(tmp_path, capsys):
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_bytes(b"first line\nsecond \xff line\n")
    ref.write_text("first line\nsecond line\n")
    rc, out, err = _run(capsys, ["score", "--metric=bleu", f"--hyp={ref}", f"--ref={hyp}"])
    assert (rc, out) == (2, "") and err.count("\n") == 1
    assert f"error: {hyp}:2: not valid UTF-8 at column 8 (byte 0xff" in err


def test_bootstrap_scores_with_the_chosen_tokenizer(data_dir, capsys):
    folder = data_dir / "wmt_en_de" / "wmt23"
    hyp, ref = folder / "systems" / "GPT4-5shot.de", folder / "reference.A.de"
    expected = sacrebleu.corpus_bleu(read_lines(hyp), [read_lines(ref)], tokenize="char").score
    assert abs(expected - sacrebleu.corpus_bleu(read_lines(hyp), [read_lines(ref)]).score) > 1
    rc, out, _ = _run(capsys, ["score", "--metric=bleu", "--tokenize=char", f"--hyp={hyp}",
                               f"--ref={ref}", "--bootstrap=5", f"--baseline={hyp}"])
    result = json.loads(out)
    assert rc == 0 and result["bleu"] == pytest.approx(expected, abs=1e-3)
    assert result["baseline"] == pytest.approx(expected, abs=1e-3)  # the same system, same tokens


def test_pool_import_jfleg_bad_utf8_names_file_and_line(data_dir, tmp_path, capsys):
    dst = tmp_path / "data" / "jfleg" / "dev"
    shutil.copytree(data_dir / "jfleg" / "dev", dst)
    ref2 = dst / "dev.ref2"
    lines = ref2.read_bytes().split(b"\n")
    lines[99] = b"\xc3(" + lines[99]
    ref2.write_bytes(b"\n".join(lines))
    out_dir = tmp_path / "out"
    rc, out, err = _run(capsys, ["pool", "import", "--dataset=jfleg", "--split=dev", f"--out={out_dir}",
                                 f"--data_dir={tmp_path / 'data'}"])
    assert (rc, out) == (2, "") and not out_dir.exists()
    assert err.splitlines()[-1] == (f"lmcor pool import: error: {ref2}:100: not valid UTF-8 at column 1 "
                                    "(byte 0xc3: invalid continuation byte)")


def test_pool_import_truncated_e2e_fails_and_leaves_no_folder(data_dir, tmp_path, capsys):
    folder = tmp_path / "data" / "e2e_cleaned"
    folder.mkdir(parents=True)
    data = (data_dir / "e2e_cleaned" / "devel-fixed.no-ol.csv").read_bytes()[:5000]
    (folder / "devel-fixed.no-ol.csv").write_bytes(data)
    out_dir = tmp_path / "out"
    rc, out, err = _run(capsys, ["pool", "import", "--dataset=e2e", "--split=dev", f"--out={out_dir}",
                                 f"--data_dir={tmp_path / 'data'}"])
    last_line = data.count(b"\n") + 1
    assert (rc, out) == (2, "") and not out_dir.exists()
    assert err.splitlines()[-1].startswith(
        f"lmcor pool import: error: {folder / 'devel-fixed.no-ol.csv'}:{last_line}: malformed CSV record")


def test_pool_stats_bad_utf8_on_line_400(tmp_path, capsys):
    record = {"id": "", "source": "Hello world, " * 40, "references": ["Hallo Welt."], "candidates": []}
    lines = [json.dumps(dict(record, id=f"r{i}")).encode("ascii") for i in range(500)]
    lines[399] = lines[399].replace(b"Hallo", b"Hal\xfflo")
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    rc, out, err = _run(capsys, ["pool", "stats", str(path)])
    column = lines[399].index(b"\xff") + 1
    assert (rc, out) == (2, "")
    assert err.splitlines()[-1] == (f"lmcor pool stats: error: {path}:400: field '<file>': not valid UTF-8 "
                                    f"at column {column} (byte 0xff: invalid start byte)")
