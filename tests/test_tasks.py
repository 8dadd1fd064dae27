"""Every SeqIO task variant builds from the real data, with the data's own counts."""
import json

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

import lmcor.tasks  # noqa: F401  (registers the tasks)
from lmcor.data.importers import import_e2e, import_jfleg, import_wmt
from lmcor.data.pool import write_pool
from lmcor import paths
from lmcor.data.preprocessors import references_of
from lmcor.tasks import common, conll14, wmt, xsum

LENGTHS = {"inputs": 256, "targets": 64}
VARIANTS = ("finetune", "lmcor", "lmcor_single")


@pytest.fixture(scope="module", autouse=True)
def task_vocab(data_dir, task_spm_path):
    gin.bind_parameter("task_vocabulary.spm_model", task_spm_path)
    gin.bind_parameter("data_root.path", str(data_dir))
    yield seqio.SentencePieceVocabulary(task_spm_path)
    # Back to the defaults rather than gin.clear_config(): other modules' bindings survive.
    for name, default in [("task_vocabulary.spm_model", None), ("data_root.path", None),
                          ("task_vocabulary.gguf_path", None), ("xsum_data.path", None),
                          ("conll14_data.files", None)]:
        gin.bind_parameter(name, default)


def _count(task_name, split):
    """(examples, references) in a split, from the task's own data source."""
    ds = seqio.get_mixture_or_task(task_name).source.get_dataset(split, shuffle=False)
    return ds.reduce((0, 0), lambda acc, ex: (acc[0] + 1, acc[1] + tf.shape(ex["references"])[0]))


def _built(task_name, split, n=3, lengths=LENGTHS):
    ds = seqio.get_mixture_or_task(task_name).get_dataset(lengths, split=split, shuffle=False)
    return list(ds.take(n).as_numpy_iterator())


@pytest.mark.parametrize("task,split,examples,references", [
    ("e2e_finetune", "test", 1847, 4693),
    ("jfleg_finetune", "test", 747, 747 * 4),
    ("wmt22_lmcor", "test", 2037, 2037 * 2),
    ("wmt21_lmcor", "test", 1002, 1002 * 3),
    ("wmt_lmcor", "validation", 279, 279),
    ("wmt_lmcor", "test", 278, 278),
])
def test_evaluation_splits_keep_every_reference(task, split, examples, references):
    n, refs = (int(x) for x in _count(task, split))
    print(f"{task}/{split}: {n} examples, {refs} references")
    assert (n, refs) == (examples, references)


def test_training_splits_have_one_example_per_reference():
    e2e_train, _ = _count("e2e_finetune", "train")
    e2e_val, e2e_val_refs = _count("e2e_finetune", "validation")
    jf_train, _ = _count("jfleg_finetune", "train")
    jf_val, _ = _count("jfleg_finetune", "validation")
    wmt_train, _ = _count("wmt_finetune", "train")
    paragraphs = list(wmt.train_records())
    print(f"e2e train {int(e2e_train)} refs, validation {int(e2e_val)} MRs; jfleg train "
          f"{int(jf_train)} refs, validation {int(jf_val)}; wmt train {int(wmt_train)}")
    assert int(e2e_train) + int(e2e_val_refs) == 4299  # every dev reference, split by MR
    assert 100 < int(e2e_val) < 250  # ~10% of the 1,484 dev MRs
    assert int(jf_train) + int(jf_val) * 4 == 754 * 4
    # WMT trains on paragraphs: one example per paragraph and reference, and every segment
    # (with its 3 wmt21 or 2 wmt22 references) inside exactly one paragraph.
    assert int(wmt_train) == sum(len(p["references"]) for p in paragraphs)
    assert sum(len(p["meta"]["segment_ids"]) * len(p["references"])
               for p in paragraphs) == 1002 * 3 + 2037 * 2
    assert seqio.get_mixture_or_task("e2e_finetune").num_input_examples("train") + int(e2e_val) == 1484


@pytest.mark.parametrize("variant", VARIANTS)
def test_wmt_variants_build_tokenized_examples(variant, task_vocab, data_dir):
    rec = next(import_wmt(data_dir, "wmt22"))
    ex = _built(f"wmt22_{variant}", "test", 1)[0]
    inputs = ex["inputs_pretokenized"].decode()
    assert inputs.startswith("source: " + rec["source"])
    greedy = rec["candidates"][0]["text"]
    if variant == "finetune":
        assert inputs == "source: " + rec["source"]
    elif variant == "lmcor_single":
        assert inputs == f"source: {rec['source']} <sep> candidates: {greedy}"
    else:
        assert len(inputs.split(" <sep> ")) == 1 + 5
    assert references_of(ex) == rec["references"]
    assert ex["targets_pretokenized"].decode() == rec["references"][0]
    assert list(ex["targets"]) == list(task_vocab.encode(rec["references"][0])) + [1]
    assert ex["inputs"][-1] == 1 and ex["inputs"].dtype == np.int32


def _with_candidates(rec):
    """A stand-in for a sampled pool: two candidates derived from the references."""
    cands = [{"text": rec["references"][0].lower(), "generator": "llm", "prompt_id": "p0",
              "decoding": "greedy", "temperature": 0.0, "logprob": -3.5},
             {"text": rec["references"][-1], "generator": "llm", "prompt_id": "p0",
              "decoding": "sample", "temperature": 0.6, "logprob": None}]
    return {**rec, "candidates": cands}


@pytest.fixture(scope="module")
def sampled_pools(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sampled")
    write_pool((_with_candidates(r) for r in import_e2e(data_dir, "test")), str(root / "e2e"))
    write_pool((_with_candidates(r) for r in import_jfleg(data_dir, "test")), str(root / "jf"))
    return {"e2e": {"test": str(root / "e2e")}, "jfleg": {"test": str(root / "jf")}}


@pytest.fixture
def with_pools(sampled_pools):
    gin.bind_parameter("pool_overrides.by_dataset", sampled_pools)
    yield
    gin.bind_parameter("pool_overrides.by_dataset", None)


def test_a_list_of_pools_reads_every_input_once_per_pool():
    """Two released E2E dev pools (prompts A and B) as one split: each pool's records in turn,
    each MR on the same side of the validation hold-out in both, with its own pool's candidates."""
    from lmcor.data.pool import read_pool, resolve_pool_path
    from lmcor.tasks import e2e

    a, b = (f"data/pools/e2e_dev_e2e_{v}.jsonl.gz" for v in ("attributes", "mr"))
    by_id = [{r["id"]: r for r in read_pool(resolve_pool_path(p))} for p in (a, b)]
    gin.bind_parameter("pool_overrides.by_dataset", {"e2e": {"dev": [a, b]}})
    try:
        train, held = list(e2e.train_records()), list(e2e.validation_records())
    finally:
        gin.bind_parameter("pool_overrides.by_dataset", None)
    for part in (train, held):
        half = len(part) // 2
        assert len(part) == 2 * half and [r["id"] for r in part[:half]] == \
            [r["id"] for r in part[half:]]
        for pool, records in zip(by_id, (part[:half], part[half:])):
            assert all(r["candidates"] == pool[r["id"]]["candidates"] for r in records)
    assert len(train) + len(held) == 2 * len(by_id[0])
    assert by_id[0][train[0]["id"]]["candidates"] != by_id[1][train[0]["id"]]["candidates"]


def test_e2e_and_jfleg_lmcor_read_a_sampled_pool(data_dir, with_pools):
    first = next(import_e2e(data_dir, "test"))
    single = _built("e2e_lmcor_single", "test", 1)[0]
    assert single["inputs_pretokenized"].decode() == \
        f"source: {first['source']} <sep> candidates: {first['references'][0].lower()}"
    assert references_of(single) == first["references"]
    n, refs = (int(x) for x in _count("e2e_lmcor", "test"))
    assert (n, refs) == (1847, 4693)
    jf = _built("jfleg_lmcor", "test", 2)
    assert all(e["inputs_pretokenized"].decode().count(" <sep> ") == 2 for e in jf)


def test_lmcor_without_candidates_names_the_record():
    with pytest.raises(tf.errors.InvalidArgumentError, match="'e2e-test-00000': no candidates"):
        _built("e2e_lmcor", "test", 1)


@pytest.mark.parametrize("dataset,split", [("e2e", "validation"), ("e2e", "test"),
                                           ("jfleg", "test"), ("wmt21", "test"),
                                           ("wmt23", "test"), ("wmt", "train"), ("wmt", "test")])
def test_every_variant_builds_from_real_data(dataset, split, with_pools):
    pooled = dataset in ("e2e", "jfleg") and split == "test"
    for variant in VARIANTS if pooled or dataset.startswith("wmt") else ["finetune"]:
        ex = _built(f"{dataset}_{variant}", split, 1)[0]
        text = ex["inputs_pretokenized"].decode()
        print(f"{dataset}_{variant}/{split}: {ex['id'].decode()}: {len(ex['inputs'])} input tokens")
        assert text.startswith("source: ") and text.count(" candidates: ") == (variant != "finetune")
        assert len(ex["inputs"]) < LENGTHS["inputs"] or ex["truncated_tokens"] > 0
        if variant == "lmcor" and dataset.startswith("wmt"):  # long: the budget shares it out
            assert text.count(" <sep> ") == 5 and ex["truncated_candidates"] > 0
        assert ex["targets_pretokenized"].decode() in references_of(ex)


def test_metric_fns_score_against_all_references():
    task = seqio.get_mixture_or_task("jfleg_finetune")
    ex = _built("jfleg_finetune", "test", 2)
    targets = [task.postprocess_fn(e["targets_pretokenized"].decode(), example=e, is_target=True)
               for e in ex]
    assert targets[0]["source"] == ex[0]["source"].decode() and len(targets[0]["references"]) == 4
    scores = {}
    for fn in task.metric_fns:
        scores.update(fn(targets, [t["references"][1] for t in targets]))
    assert scores["gleu"] > 50
    e2e = seqio.get_mixture_or_task("e2e_finetune")
    names = {k for fn in e2e.metric_fns for k in fn([["a b c d"]], ["a b c d"])}
    assert {"bleu", "chrf", "rougeLsum"} <= names
    assert {fn.__name__ for fn in seqio.get_mixture_or_task("wmt_lmcor").metric_fns} == \
        {"seqio_chrf", "seqio_bleu"}


def test_mixtures_combine_years_and_generators():
    mix = seqio.get_mixture_or_task("wmt_lmcor_mix")
    assert sorted(t.name for t in mix.tasks) == ["wmt21_lmcor", "wmt22_lmcor"]
    rates = {t.name: mix.get_rate(t) for t in mix.tasks}
    assert rates == {"wmt21_lmcor": 1002, "wmt22_lmcor": 2037}
    per_system = seqio.get_mixture_or_task("wmt22_per_system_lmcor_single_mix")
    assert len(per_system.tasks) == len(wmt.systems("wmt22")) == 9
    ex = _built("wmt22_online_a_lmcor_single", "test", 1)[0]
    online_a = [c for c in next(import_wmt(paths.data_root(), "wmt22"))["candidates"]
                if c["generator"] == "Online-A"][0]["text"]
    assert ex["inputs_pretokenized"].decode().endswith("candidates: " + online_a)
    ds = mix.get_dataset(LENGTHS, split="train", shuffle=False, seed=0)
    assert len(list(ds.take(4).as_numpy_iterator())) == 4


def test_host_shards_partition_the_examples():
    source = seqio.get_mixture_or_task("e2e_finetune").source
    shards = [[e["id"] for e in source.get_dataset(
        "validation", shuffle=False, shard_info=seqio.ShardInfo(i, 3)).as_numpy_iterator()]
        for i in range(3)]
    everything = [e["id"] for e in source.get_dataset("validation", shuffle=False).as_numpy_iterator()]
    assert sorted(sum(shards, [])) == sorted(everything) and len(set(everything)) == 144
    assert all(shards)


def test_registering_a_task_module_twice_is_refused():
    """As SeqIO does: a second registration of a name would otherwise keep the first one's data
    and metrics without a word (tests/test_task_metrics.py registers names directly)."""
    import importlib

    before = set(seqio.TaskRegistry.names())
    with pytest.raises(ValueError, match="duplicate provider: e2e_finetune"):
        importlib.reload(lmcor.tasks.e2e)
    assert set(seqio.TaskRegistry.names()) == before


def test_xsum_from_both_file_formats(tmp_path):
    fixtures = __import__("pathlib").Path(__file__).parent / "fixtures" / "xsum"
    original = list(xsum.read_xsum("validation", path=str(fixtures / "original")))
    jsonl = list(xsum.read_xsum("validation", path=str(fixtures / "jsonl")))
    assert [r["id"] for r in original] == ["xsum-34687720"]
    assert original[0]["references"] == [
        "A council has approved plans for a new footbridge over the river in the town centre."]
    assert original[0]["source"].startswith("Councillors voted 9-2")
    assert "Share this with" not in original[0]["source"]
    assert [(r["id"], r["source"], r["references"]) for r in jsonl] == \
        [(r["id"], r["source"], r["references"]) for r in original]
    gin.bind_parameter("xsum_data.path", str(fixtures / "original"))
    ex = _built("xsum_finetune", "train", 5)
    assert [e["id"].decode() for e in ex] == ["xsum-36451244", "xsum-35982761"]
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"document": "d", "summary": "s", "id": "1"}\n{"document": "d"}\n')
    with pytest.raises(ValueError, match=r"train.jsonl:2: field 'summary'"):
        list(xsum.read_xsum("train", path=str(tmp_path)))
    with pytest.raises(ValueError, match="TFDS 'xsum' is not prepared"):
        list(xsum.read_xsum("test", tfds_data_dir=str(tmp_path / "tfds")))


def test_conll14_m2_references_per_annotator():
    m2 = str(__import__("pathlib").Path(__file__).parent / "fixtures" / "conll14" / "tiny.m2")
    recs = list(conll14.read_m2(m2, "test"))
    assert [r["source"] for r in recs] == [
        "Keeping the Secret of Genetic Testing",
        "What is more , the safety of the patients is the most importance thing .",
        "They has the right to know ."]
    assert recs[0]["references"] == [recs[0]["source"]] * 2
    assert recs[1]["references"] == [
        "What is more , the safety of the patients is the most important thing .",
        "Moreover , the safety of patients is the most important thing ."]
    assert recs[2]["references"] == ["They have the right to know about it .",
                                     "They have a right to know ."]
    gin.bind_parameter("conll14_data.files", {"test": m2})
    ex = _built("conll14_finetune", "test", 5)
    assert [json.loads(e["references"]) for e in ex] == [r["references"] for r in recs]


@pytest.mark.parametrize("text,error", [
    ("S a b .\nA 0 1|||R:NOUN|||c|||REQUIRED|||-NONE-\n", r"bad.m2:2: field 'A': expected 6"),
    ("S a b .\nA x 1|||R|||c|||REQUIRED|||-NONE-|||0\n", r"bad.m2:2: field 'A': bad span"),
    ("A 0 1|||R|||c|||REQUIRED|||-NONE-|||0\n", r"bad.m2:1: field 'A': edit before any 'S'"),
    ("S a b .\nS c d .\n", r"bad.m2:2: field 'S': no blank line"),
])
def test_conll14_malformed_m2_names_file_and_line(tmp_path, text, error):
    (tmp_path / "bad.m2").write_text(text)
    with pytest.raises(ValueError, match=error):
        list(conll14.read_m2(str(tmp_path / "bad.m2"), "test"))


def test_feature_converters_on_a_real_task():
    from lmcor.data.feature_converters import DecoderOnlyFeatureConverter

    small = {"inputs": 128, "targets": 128}
    raw = _built("jfleg_finetune", "test", 12, small)

    def converted(converter, n):
        task = seqio.get_mixture_or_task("jfleg_finetune")
        ds = task.get_dataset(small, split="test", shuffle=False).take(4)  # packing reads ahead
        return list(converter(ds, small).take(n).as_numpy_iterator())

    rows = converted(DecoderOnlyFeatureConverter(pack=False, bos_id=2), 3)
    for row, ex in zip(rows, raw):
        weighted = row["decoder_target_tokens"][row["decoder_loss_weights"] == 1]
        assert list(weighted) == list(ex["targets"])
        assert list(row["decoder_input_tokens"][:len(ex["inputs"])]) == [2] + list(ex["inputs"][:-1])
    packed = converted(DecoderOnlyFeatureConverter(pack=True, bos_id=2), 1)[0]
    n = packed["decoder_segment_ids"].max()
    assert n >= 2
    weighted = packed["decoder_target_tokens"][packed["decoder_loss_weights"] == 1]
    assert list(weighted) == [t for ex in raw[:n] for t in ex["targets"]]
    encdec = converted(seqio.EncDecFeatureConverter(pack=False), 1)[0]
    assert list(encdec["encoder_input_tokens"][:len(raw[0]["inputs"])]) == list(raw[0]["inputs"])


@pytest.mark.slow
def test_gemma_vocabulary_tokenizes_tasks(gemma_gguf_path, task_spm_path, tmp_path, monkeypatch):
    from lmcor.checkpoints.gguf import gemma_tokenizer
    from lmcor.data.vocab import gemma_vocabulary

    monkeypatch.setenv("LMCOR_CACHE_DIR", str(tmp_path))
    tok = gemma_tokenizer(gemma_gguf_path)
    vocab = gemma_vocabulary(gemma_gguf_path, tokenizer=tok)
    text = "Die Katze saß auf der Matte, 123 €  — ok?"
    assert list(vocab.encode(text)) == tok.encode(text)
    assert list(vocab.encode_tf(tf.constant(text)).numpy()) == tok.encode(text)
    assert (vocab.eos_id, vocab.pad_id, vocab.bos_id) == (tok.eos_id, 0, tok.bos_id) == (1, 0, 2)
    assert vocab.vocab_size == tok.vocab_size
    gin.bind_parameter("task_vocabulary.kind", "gemma")
    gin.bind_parameter("task_vocabulary.gguf_path", gemma_gguf_path)
    try:  # the proto is cached now: the task's vocabulary does not parse the GGUF again
        ex = _built("wmt22_lmcor_single", "test", 1)[0]
        assert list(ex["targets"]) == tok.encode(ex["targets_pretokenized"].decode()) + [tok.eos_id]
    finally:
        gin.bind_parameter("task_vocabulary.kind", "sentencepiece")


def test_seqio_evaluator_scores_against_every_reference(data_dir):
    """The JFLEG SOURCE baseline through seqio.Evaluator equals GLEU computed from the raw files."""
    from lmcor import metrics

    ev = seqio.Evaluator(mixture_or_task_name="jfleg_finetune", eval_split="test",
                         feature_converter=seqio.EncDecFeatureConverter(pack=False),
                         sequence_length={"inputs": 256, "targets": 256}, use_memory_cache=True)
    examples = list(ev.cached_task_datasets["jfleg_finetune"].as_numpy_iterator())
    vocab = seqio.get_mixture_or_task("jfleg_finetune").output_features["targets"].vocabulary
    echoed = [list(vocab.encode(ex["source"].decode())) for ex in examples]
    width = max(map(len, echoed))
    result, _ = ev.evaluate(compute_metrics=True, score_fn=None, predict_fn=lambda ds: [
        (i, np.array(ids + [0] * (width - len(ids)))) for i, ids in enumerate(echoed)])
    raw = list(import_jfleg(data_dir, "test"))
    hyps = [vocab.decode(ids) for ids in echoed]
    expected = metrics.gleu([r["source"] for r in raw], hyps,
                            [[r["references"][k] for r in raw] for k in range(4)])
    got = result.result()["jfleg_finetune"]["gleu"]
    print(f"JFLEG test SOURCE baseline via seqio.Evaluator: GLEU {got:.2f}")
    assert got == pytest.approx(expected, abs=1e-9) and 39.5 < got < 41.5
