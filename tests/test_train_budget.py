"""Training budgets in examples, validation by examples seen, early stopping on a stalled
validation metric, and the history / summary files the tables and learning curves read."""
import json
import os

import gin
import numpy as np
import pytest

from _train_worker import BASE_BINDINGS, reverse_arrays
from lmcor.cli import train_command as train_lib
from lmcor.training import batches


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_row_examples_counts_the_packed_segments_that_carry_loss():
    segments = np.array([[1, 1, 2, 2, 3, 0],    # three examples
                         [1, 1, 1, 1, 1, 1],    # one
                         [1, 1, 2, 2, 0, 0]])   # two, but the second has no loss weight
    weights = np.array([[0, 1, 0, 1, 1, 0],
                        [0, 0, 1, 1, 1, 1],
                        [0, 1, 0, 0, 0, 0]], np.float32)
    packed = {"decoder_loss_weights": weights, "decoder_segment_ids": segments}
    np.testing.assert_array_equal(batches.row_examples(packed), [3, 1, 1])
    unpacked = {"decoder_loss_weights": weights[:, ::-1] * 0 + np.array([[1], [0], [1]])}
    np.testing.assert_array_equal(batches.row_examples(unpacked), [1, 0, 1])


def test_examples_per_step_follow_the_shuffled_batches():
    rng = np.random.default_rng(0)
    n = 13
    segments = np.zeros((n, 8), np.int32)
    for i, k in enumerate(rng.integers(1, 4, n)):
        segments[i, :2 * k] = np.repeat(np.arange(1, k + 1), 2)
    arrays = {"decoder_loss_weights": (segments > 0).astype(np.float32),
              "decoder_segment_ids": segments, "decoder_input_tokens": segments}
    source = batches.BatchSource(batches.split_shards(arrays, 1, [0]), 1, 4, seed=3)
    want = [batches.row_examples(source.batch(t)).sum() for t in range(10)]  # crosses epochs
    np.testing.assert_array_equal(source.examples_per_step(10), want)


def _train(model_dir, steps, *bindings):
    base = [f"--gin.{b}" for b in BASE_BINDINGS]
    return train_lib.run(base + [f"--gin.train.model_dir={str(model_dir)!r}",
                                 f"--gin.train.train_steps={steps}", *bindings])


def _history(model_dir):
    with open(os.path.join(model_dir, "eval", "history.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


SLOW_EVAL = ["--gin.train.evaluator=@slow_eval", "--gin.slow_eval.seconds=0",
             "--gin.Checkpointer.best_metric='neg_step'"]


def test_an_examples_budget_ends_the_run_with_an_evaluation(tmp_path):
    # One example per row, 8 rows per step: 20 examples end the run after step 3 (24 seen),
    # and evaluations every 16 examples fall after step 2 and at the budget's end.
    out = _train(tmp_path, 100, "--gin.train.train_examples=20",
                 "--gin.train.eval_every_examples=16", *SLOW_EVAL)
    assert (out["step"], out["examples_seen"], out["stopped"]) == (3, 24, "budget")
    history = _history(tmp_path)
    assert [(r["step"], r["examples_seen"]) for r in history] == [(2, 16), (3, 24)]
    assert history[-1]["metrics"] == {"neg_step": -3.0}
    assert 0 < history[0]["train_seconds"] <= history[1]["train_seconds"]
    with open(os.path.join(tmp_path, "train_summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["examples_seen"] == 24 and summary["best_step"] == 2


def test_a_stalled_metric_stops_the_run_and_a_rerun_keeps_it_stopped(tmp_path):
    # neg_step only falls: after evaluations at steps 1, 2, 3 the last two did not beat step 1.
    args = ["--gin.train.eval_every_examples=8", "--gin.train.patience=2", *SLOW_EVAL]
    out = _train(tmp_path, 50, *args)
    assert (out["step"], out["stopped"], out["best_step"]) == (3, "converged", 1)
    seconds = out["train_seconds"]
    gin.clear_config()
    again = _train(tmp_path, 50, *args)
    assert (again["step"], again["stopped"], again["losses"]) == (3, "converged", [])
    assert len(_history(tmp_path)) == 3
    assert again["train_seconds"] == pytest.approx(seconds, abs=0.01)


def test_an_epochs_budget_counts_passes_over_the_training_examples(tmp_path):
    # The reverse task has 64 examples: 0.3 epochs is 20 examples, 3 steps of 8.
    out = _train(tmp_path, 100, "--gin.train.train_epochs=0.3")
    assert (out["step"], out["examples_seen"], out["stopped"]) == (3, 24, "budget")
    # A budget that train_steps cuts short: the run ends at the cap, and says so.
    gin.clear_config()
    capped = _train(tmp_path / "capped", 2, "--gin.train.train_epochs=5")
    assert (capped["step"], capped["examples_seen"], capped["stopped"]) == (2, 16, "done")


def test_patience_without_a_metric_is_refused(tmp_path):
    with pytest.raises(ValueError, match="patience"):
        _train(tmp_path, 5, "--gin.train.patience=2")


def test_reverse_rows_hold_one_example_each():
    # The arithmetic above assumes it: the reverse task's rows are unpacked, one example each.
    arrays = reverse_arrays(16)
    np.testing.assert_array_equal(batches.row_examples(arrays), np.ones(16))


# A tiny Gemma trained the cheap way (as in tests/test_train_resume.py), for the released
# adapter: LoRA on the upper layers, task vocabulary, frozen and cached bottom layers.
GEMMA_LORA = ["--gin.train.model=@gemma_model()", "--gin.gemma_model.preset='tiny'",
              "--gin.gemma_model.lora_rank=2", "--gin.gemma_model.vocab='task'",
              "--gin.gemma_model.freeze_embeddings=True", "--gin.gemma_model.freeze_layers=2",
              "--gin.gemma_model.cache_frozen=True", "--gin.train.data=@reverse_prefix_task",
              "--gin.make_optimizer.name='adamw'"]


def test_a_released_adapter_loads_as_its_run_does(tmp_path, task_spm_path):
    import jax

    from lmcor.inference import export
    from lmcor.checkpoints import released_adapter
    from lmcor.inference.run_dir import configured_parts, trained_params
    from lmcor.training.budget import read_history

    run = tmp_path / "run"
    # Validated at 8 and 16 examples (no best metric: the latest step is the one released).
    _train(run, 3, *GEMMA_LORA, "--gin.train.evaluator=@slow_eval", "--gin.slow_eval.seconds=0",
           "--gin.train.eval_every_examples=8")
    gin.clear_config()
    # The run trained on synthetic ids; loading it as a corrector needs some vocabulary.
    vocab = [f"task_vocabulary.spm_model = {str(task_spm_path)!r}"]
    model, _, _, _ = configured_parts(str(run), vocab)
    model = model.attach(str(run))
    want = trained_params(str(run), model)  # the run folder at its latest step
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"adapter_{dtype}"
        export.export_adapter(str(run), str(out), dtype=dtype, gin_bindings=vocab)
        assert {released_adapter.WEIGHTS, "adapter.json", "config.gin", "task_vocab.json",
                "train_summary.json"} <= set(os.listdir(out))
        info = released_adapter.manifest(str(out))
        assert (info["step"], info["dtype"]) == (3, dtype)
        # The learning curve travels with it: the report reads the same validations.
        assert len(read_history(str(out))) >= 2 and read_history(str(out)) == read_history(str(run))
        got = trained_params(str(out), model)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            b = np.asarray(b, np.float32)
            if dtype == "bfloat16":
                b = b.astype(jax.numpy.bfloat16).astype(np.float32)
            np.testing.assert_array_equal(np.asarray(a), b)
    with pytest.raises(ValueError, match="step 3 only"):
        trained_params(str(out), model, step=2)
    # A changed file is refused, and so is an adapter over the size limit.
    path = out / released_adapter.WEIGHTS
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(released_adapter.AdapterError, match="sha256"):
        trained_params(str(out), model)
    with pytest.raises(released_adapter.AdapterError, match="limit"):
        export.export_adapter(str(run), str(tmp_path / "big"), max_mb=1e-6, gin_bindings=vocab)


def test_the_export_command_takes_bare_gin_strings(tmp_path, capsys):
    """`--gin.NAME=path` without inner quotes reaches the run's configurables: the missing
    vocabulary file is the first thing loading the run trips on."""
    from lmcor.cli import export_command

    try:
        assert export_command.main([str(tmp_path), f"--out={tmp_path / 'out'}",
                                    "--gin.task_vocabulary.spm_model=no/such/vocab.model"]) == 2
    finally:
        gin.clear_config()
    assert "no/such/vocab.model: no such file" in capsys.readouterr().err
