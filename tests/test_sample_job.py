"""The sampling job end to end: resume after SIGKILL, settings checks, clear errors, backends."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import gin
import pytest

from lmcor.sampling import job as sample
from lmcor.sampling.backends.base import SamplingParams
from lmcor.sampling.backends.http import HttpBackend
from lmcor.sampling.backends.precomputed import PrecomputedBackend, PrecomputedError
from lmcor.data.pool import read_pool
from lmcor.sampling.prompts import PromptConfig
from lmcor.cli import sample_command

from _llm_server import FakeLLM

REPO = pathlib.Path(__file__).resolve().parents[1]
N_EXAMPLES, SHARD = 16, 2


@pytest.fixture(autouse=True)
def _fresh_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _argv(out_dir, server, data_dir, *extra):
    return ["--gin_file=runs/sample.gin", "--gin_file=runs/sample_http.gin",
            "--gin_file=tasks/sampling/e2e.gin", f"--gin.OUTPUT_DIR={out_dir}",
            f"--gin.DATA_DIR={data_dir}", f"--gin.HttpBackend.base_url={server.base_url}",
            "--gin.HttpBackend.model='fake-llm'", "--gin.HttpBackend.concurrency=2",
            f"--gin.sample_pool.max_examples={N_EXAMPLES}", f"--gin.sample_pool.shard_size={SHARD}",
            "--gin.sample_pool.batch_size=2", "--gin.SamplingParams.num_samples=2",
            "--gin.PromptConfig.selection='random'", "--gin.sample_pool.tensorboard=False", *extra]


def _run_cli(argv):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "lmcor.sampling", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _shards(out_dir):
    return sorted(p.name for p in out_dir.glob("pool-*.jsonl"))


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path, data_dir):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    with FakeLLM(delay_s=0.1) as server:
        proc = _run_cli(_argv(killed, server, data_dir))
        deadline = time.time() + 60
        while not _shards(killed) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        survived = _shards(killed)
        assert 1 <= len(survived) < N_EXAMPLES // SHARD, "kill did not land mid-run"
        list(read_pool(str(killed)))  # whatever survived is valid pool data
        rerun = _run_cli(_argv(killed, server, data_dir))
        out, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, err
        assert sample_command.main(_argv(clean, server, data_dir)) == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["counts"]["shards_written_this_run"] == N_EXAMPLES // SHARD - len(survived)
    resumed, uninterrupted = list(read_pool(str(killed))), list(read_pool(str(clean)))
    assert [r["id"] for r in resumed] == [f"e2e-test-{i:05d}" for i in range(N_EXAMPLES)]
    assert resumed == uninterrupted
    assert len({c["text"] for r in resumed for c in r["candidates"]}) == 3 * N_EXAMPLES
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["examples"] == N_EXAMPLES
    assert manifest["model"] == "fake-llm" and manifest["prompt_variant"] == "e2e_attributes"
    assert manifest["config"]["sampling"]["temperature"] == 0.6
    # A finished pool reruns as a no-op; other settings are refused rather than mixed in.
    gin.clear_config()
    with FakeLLM() as server:
        assert sample_command.main(_argv(killed, server, data_dir)) == 0
        assert server.requests == []
        gin.clear_config()
        assert sample_command.main(_argv(killed, server, data_dir, "--gin.SEED=1")) == 2


def _write_gin(tmp_path, text):
    path = tmp_path / "bad.gin"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case, pattern", [
    ("malformed", r"bad gin file .*bad\.gin.*line 2"),
    ("variant", r"unknown prompt variant 'e2e_nope'; known variants: .*e2e_attributes"),
    ("train_split", r"cannot load the training split 'dev'.*devel-fixed\.no-ol\.csv"),
    ("no_output", r"no output directory: pass --gin.OUTPUT_DIR=DIR"),
])
def test_bad_configuration_is_one_clear_error(case, pattern, tmp_path, data_dir, capsys):
    argv = ["--gin_file=runs/sample.gin", "--gin_file=runs/sample_http.gin",
            "--gin_file=tasks/sampling/e2e.gin", "--gin.HttpBackend.model='m'",
            f"--gin.OUTPUT_DIR={tmp_path / 'out'}"]
    if case == "malformed":
        argv.append("--gin_file=" + _write_gin(tmp_path, "PromptConfig.num_shots = 5\n"
                                                         "PromptConfig.variant = = 'x'\n"))
    elif case == "variant":
        argv.append("--gin.PromptConfig.variant='e2e_nope'")
    elif case == "train_split":
        # Only the test split is present: no demonstrations to build prompts from.
        only_test = tmp_path / "data" / "e2e_cleaned"
        only_test.mkdir(parents=True)
        (only_test / "test-fixed.csv").symlink_to(data_dir / "e2e_cleaned" / "test-fixed.csv")
        argv.append(f"--gin.DATA_DIR={tmp_path / 'data'}")
    else:
        argv.remove(f"--gin.OUTPUT_DIR={tmp_path / 'out'}")
    assert sample_command.main(argv) == 2
    err = capsys.readouterr().err
    assert len([ln for ln in err.splitlines() if ln.startswith("lmcor sample: error:")]) == 1
    assert re.search(pattern, err), err
    assert not list((tmp_path / "out").glob("pool-*")) if (tmp_path / "out").exists() else True


def _job(out_dir, data_dir, backend, **kw):
    args = dict(output_dir=str(out_dir), task="jfleg", split="test", demo_split="dev",
                data_dir=str(data_dir), backend=backend, max_examples=5, shard_size=2,
                prompt=PromptConfig("jfleg_io", num_shots=2),
                sampling=SamplingParams(num_samples=2, temperature=0.7))
    return sample.sample_pool(**{**args, **kw})


def test_precomputed_backend_replays_line_files_and_pools(tmp_path, data_dir):
    src = (data_dir / "jfleg" / "test" / "test.src").read_text().split("\n")[:-1]
    files = []
    for k, tag in enumerate(["greedy", "s1", "s2"]):
        files.append(tmp_path / f"{tag}.txt")
        files[-1].write_text("".join(f"{tag}: {line}\n" for line in src))
    lines = PrecomputedBackend(greedy_file=str(files[0]), sample_files=[str(f) for f in files[1:]],
                               task="jfleg", split="test", data_dir=str(data_dir),
                               name="sys-a", sample_temperature=0.7)
    _job(tmp_path / "a", data_dir, lines)
    pool_a = list(read_pool(str(tmp_path / "a")))
    for rec, line in zip(pool_a, src):
        assert [c["text"] for c in rec["candidates"]] == [
            f"{t}: {line}".strip() for t in ("greedy", "s1", "s2")]
        assert [c["decoding"] for c in rec["candidates"]] == ["greedy", "sample", "sample"]
        assert {c["generator"] for c in rec["candidates"]} == {"sys-a"}
    # A pool is itself a precomputed source: replaying it reproduces it.
    _job(tmp_path / "b", data_dir, PrecomputedBackend(pool=str(tmp_path / "a"), name="sys-a"))
    assert list(read_pool(str(tmp_path / "b"))) == pool_a
    with pytest.raises(PrecomputedError, match="'jfleg-test-0000' has 1 greedy and 2 sampled"):
        _job(tmp_path / "c", data_dir, PrecomputedBackend(pool=str(tmp_path / "a")),
             sampling=SamplingParams(num_samples=3, temperature=0.7))
    with pytest.raises(PrecomputedError, match=r"short\.txt: 3 lines but jfleg/dev has 754 examples"):
        short = tmp_path / "short.txt"
        short.write_text("a\nb\nc\n")
        PrecomputedBackend(greedy_file=str(short), task="jfleg", split="dev",
                           data_dir=str(data_dir))


@pytest.mark.slow
def test_jax_backend_samples_a_real_pool_with_gemma_270m(tmp_path, data_dir, gemma_gguf_path):
    from lmcor.sampling.backends.jax_lm import JaxBackend

    backend = JaxBackend(checkpoint="gemma3-270m", batch_size=2, per_example_seed=False)
    manifest = sample.sample_pool(
        output_dir=str(tmp_path), task="e2e", split="test", demo_split="dev",
        data_dir=str(data_dir), backend=backend, max_examples=2, shard_size=2, batch_size=2,
        prompt=PromptConfig("e2e_mr", num_shots=2),
        sampling=SamplingParams(num_samples=2, temperature=0.6, max_new_tokens=10),
        tensorboard=True)
    records = list(read_pool(str(tmp_path)))
    assert [r["id"] for r in records] == ["e2e-test-00000", "e2e-test-00001"]
    for rec in records:
        cands = rec["candidates"]
        assert [c["decoding"] for c in cands] == ["greedy", "sample", "sample"]
        assert [c["temperature"] for c in cands] == [0.0, 0.6, 0.6]
        assert {c["generator"] for c in cands} == {"gemma3-270m"}
        assert all(c["logprob"] < 0 for c in cands)
        # Both inputs describe "Blue Spice": a working 270M copies the name from its input,
        # and the cut at the next demonstration leaves no "MR:" line behind.
        assert "Blue Spice" in cands[0]["text"]
        assert all("\n" not in c["text"] and "MR:" not in c["text"] for c in cands)
    stats = manifest["backend_stats"]
    assert stats["generated_tokens"] > 0 and 0 <= stats["padding_fraction"] < 0.5
    assert manifest["status"] == "complete" and manifest["counts"]["candidates"] == 6
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard" / "host0")).Reload()
    done = events.Tensors("sample/examples_done")
    assert [e.step for e in done] == [2]
    assert "sample/generated_tokens_per_s" in events.Tags()["tensors"]
    # One prefill for greedy and samples: the same greedy candidates, fresh samples, another
    # fingerprint (so a pool is never resumed with the other setting).
    shared = JaxBackend(checkpoint="gemma3-270m", batch_size=2, per_example_seed=False,
                        shared_prefill=True)
    sample.sample_pool(
        output_dir=str(tmp_path / "shared"), task="e2e", split="test", demo_split="dev",
        data_dir=str(data_dir), backend=shared, max_examples=2, shard_size=2, batch_size=2,
        prompt=PromptConfig("e2e_mr", num_shots=2),
        sampling=SamplingParams(num_samples=2, temperature=0.6, max_new_tokens=10))
    for a, b in zip(records, read_pool(str(tmp_path / "shared"))):
        assert [c["decoding"] for c in b["candidates"]] == ["greedy", "sample", "sample"]
        assert b["candidates"][0]["text"] == a["candidates"][0]["text"]
        assert b["candidates"][0]["logprob"] == pytest.approx(a["candidates"][0]["logprob"],
                                                              rel=1e-3)
    assert shared.fingerprint() != backend.fingerprint()


def test_jax_backend_shards_params_over_the_model_axis_without_changing_logits():
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import linen as nn

    from lmcor.sampling.backends.jax_lm import JaxBackend
    from lmcor.models.gemma import GemmaConfig, GemmaLM

    lm = GemmaLM(GemmaConfig.preset("tiny"))
    params = nn.meta.unbox(lm.module.init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32)))
    backend = JaxBackend(checkpoint="unused", model_parallel=2)
    backend._lm = lm
    placed = backend._place(params)
    specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(placed)}
    assert any("model" in s for s in specs), specs
    batch = {"tokens": np.array([[0, 0, 5, 6], [7, 8, 9, 10]], np.int32),
             "mask": np.array([[0, 0, 1, 1], [1, 1, 1, 1]], bool)}
    want, _ = lm.prefill(params, batch, 2)
    got, _ = lm.prefill(placed, batch, 2)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("task, first_id, prefix", [
    ("e2e", "e2e-test-00000", "Attributes: "), ("jfleg", "jfleg-test-0000", "Original: "),
    ("wmt", "wmt22-ende-00000", "English: ")])
def test_every_task_gin_samples_its_split(task, first_id, prefix, tmp_path, data_dir):
    with FakeLLM() as server:
        argv = _argv(tmp_path, server, data_dir, f"--gin_file=tasks/sampling/{task}.gin",
                     "--gin.sample_pool.max_examples=2", "--gin.PromptConfig.num_shots=3")
        argv.remove("--gin_file=tasks/sampling/e2e.gin")
        assert sample_command.main(argv) == 0
        prompt = server.requests[0][1]["prompt"]
    records = list(read_pool(str(tmp_path)))
    assert records[0]["id"] == first_id and len(records) == 2
    assert prompt.count(prefix) == 4  # three demonstrations and the query
    assert all(len(r["candidates"]) == 3 for r in records)


def test_hosts_split_the_shards_and_together_equal_one_host(tmp_path, data_dir):
    def run(out, index, count):
        backend = HttpBackend(base_url=server.base_url, model="fake-llm", concurrency=2)
        return sample.sample_pool(
            output_dir=str(out), task="e2e", split="test", demo_split="dev",
            data_dir=str(data_dir), backend=backend, max_examples=7, shard_size=2,
            prompt=PromptConfig("e2e_io", num_shots=2, selection="bm25"),
            sampling=SamplingParams(num_samples=1), process_index=index, process_count=count)

    with FakeLLM() as server:
        first = run(tmp_path / "two", 0, 2)
        run(tmp_path / "two", 1, 2)
        run(tmp_path / "one", 0, 1)
    assert first["counts"]["shards_written_this_run"] == 2  # shards 0 and 2 of 0..3
    assert _shards(tmp_path / "two") == [f"pool-{i:05d}.jsonl" for i in range(4)]
    assert list(read_pool(str(tmp_path / "two"))) == list(read_pool(str(tmp_path / "one")))


def test_model_modules_import_after_the_job_locked_its_gin_config():
    # Fresh interpreter: the model modules must not be imported before the lock, as in the CLI.
    code = ("from lmcor.cli import gin_flags\n"
            "gin_flags.parse_gin(['runs/sample.gin', 'tasks/sampling/e2e.gin'], [])\n"
            "import sys\nassert 'lmcor.models.gemma' not in sys.modules\n"
            "from lmcor.sampling.backends import jax_lm\n"
            "backend = jax_lm.JaxBackend(checkpoint='gemma3-270m')\n"
            "backend.tokenizer\n"  # loads the model: the loader and the model modules
            "print(sys.modules['lmcor.models.gemma'].GemmaLM.__name__)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "GemmaLM", out.stderr[-2000:]


def test_a_seeded_subset_is_a_random_slice_in_split_order_and_sampled_as_in_the_whole(
        tmp_path, data_dir):
    def run(out, n, subset_seed):
        backend = HttpBackend(base_url=server.base_url, model="fake-llm", concurrency=2)
        return sample.sample_pool(
            output_dir=str(out), task="e2e", split="test", demo_split="dev",
            data_dir=str(data_dir), backend=backend, max_examples=n, subset_seed=subset_seed,
            shard_size=4, prompt=PromptConfig("e2e_io", num_shots=2),
            sampling=SamplingParams(num_samples=1))

    with FakeLLM() as server:
        run(tmp_path / "a", 6, 0)
        run(tmp_path / "b", 6, 1)
        with pytest.raises(sample.SampleError, match="subset_seed"):
            run(tmp_path / "a", 6, 1)  # another subset is not mixed into this pool
    a, b = list(read_pool(str(tmp_path / "a"))), list(read_pool(str(tmp_path / "b")))
    ids = [r["id"] for r in a]
    positions = [int(i.rsplit("-", 1)[1]) for i in ids]
    assert len(set(ids)) == 6 and positions == sorted(positions)
    assert positions != list(range(6)) and max(positions) > 100  # drawn from the whole split
    assert ids != [r["id"] for r in b]
    # Each record is the split's input of that id.
    whole = {r["id"]: r for r in sample.choose_inputs(
        sample.load_split("e2e", str(data_dir), "test", "evaluation"), None, None)}
    assert all(r["source"] == whole[r["id"]]["source"] for r in a)
    assert sample.choose_inputs(list(range(10)), 3, None) == [0, 1, 2]
    assert sample.choose_inputs(list(range(10)), 3, 5) == sample.choose_inputs(list(range(10)), 3, 5)
