"""Preemption and crash safety of `lmcor train`, with the trainer in a real subprocess:
SIGKILL mid-run then restart reproduces an uninterrupted run bit for bit; SIGTERM saves and
exits 0; a non-finite loss stops the run without writing the bad state; a damaged newest
checkpoint is moved aside and the run resumes from the intact one before it."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "_train_worker.py")
STEPS = 12
SLOW = ["--gin.train.evaluator=@slow_eval", "--gin.train.eval_every=2",
        "--gin.Checkpointer.best_metric='neg_step'", "--gin.Checkpointer.keep_best=1"]
# A tiny Gemma trained the cheap way: LoRA adapters on the upper layers, task vocabulary,
# frozen embedding and bottom layers whose output is cached on disk.
GEMMA_LORA = ["--gin.train.model=@gemma_model()", "--gin.gemma_model.preset='tiny'",
              "--gin.gemma_model.lora_rank=2", "--gin.gemma_model.vocab='task'",
              "--gin.gemma_model.freeze_embeddings=True", "--gin.gemma_model.freeze_layers=2",
              "--gin.gemma_model.cache_frozen=True", "--gin.train.data=@reverse_prefix_task",
              "--gin.make_optimizer.name='adamw'"]
MODELS = {"t5": SLOW, "gemma_lora": SLOW + GEMMA_LORA}


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """Every worker compiles the same programs; a shared persistent cache pays for them once."""
    global CACHE
    CACHE = str(tmp_path_factory.mktemp("jax_cache"))


CACHE = None


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_COMPILATION_CACHE_DIR=CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _start(model_dir, steps=STEPS, extra=()):
    return subprocess.Popen([sys.executable, WORKER, str(model_dir), str(steps), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def _finish(proc, timeout=1200):  # generous: CI machines may be heavily shared
    out, err = proc.communicate(timeout=timeout)
    summary = [json.loads(l[8:]) for l in out.splitlines() if l.startswith("SUMMARY ")]
    return proc.returncode, (summary[0] if summary else None), err


def _finalized_steps(model_dir):
    ckpt = os.path.join(model_dir, "checkpoints")
    if not os.path.isdir(ckpt):
        return []
    return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())


def _params(model_dir, step):
    path = os.path.join(model_dir, "checkpoints", str(step), "state")
    restored = ocp.PyTreeCheckpointer().restore(path)
    return restored["params"], restored


def _assert_trees_equal(a, b):
    import jax
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _straight_run(tmp_path_factory, kind):
    d = tmp_path_factory.mktemp(f"straight_{kind}")
    rc, summary, err = _finish(_start(d, extra=MODELS[kind]))
    assert rc == 0, err[-3000:]
    assert summary["step"] == STEPS and summary["stopped"] == "done"
    return d, summary, kind


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory):
    """The tiny T5 trained STEPS steps without interruption: the reference of the kill test,
    and (copied) the run whose newest checkpoint the corruption test damages."""
    return _straight_run(tmp_path_factory, "t5")


@pytest.fixture(scope="module", params=sorted(MODELS))
def uninterrupted(request, tmp_path_factory):
    if request.param == "t5":
        return request.getfixturevalue("t5_run")
    return _straight_run(tmp_path_factory, request.param)


def test_sigkill_then_restart_matches_uninterrupted_run(uninterrupted, tmp_path):
    straight_dir, straight, kind = uninterrupted
    extra = MODELS[kind]
    proc = _start(tmp_path, extra=extra)
    deadline = time.time() + 1200
    while time.time() < deadline and not [s for s in _finalized_steps(tmp_path) if s >= 4]:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no handler runs, an async save may be half written
    proc.wait()
    killed_at = max(_finalized_steps(tmp_path))
    assert 4 <= killed_at < STEPS, "the run finished before it could be killed"
    rc, resumed, err = _finish(_start(tmp_path, extra=extra))
    assert rc == 0, err[-3000:]
    assert resumed["step"] == STEPS
    # It continued from the last finished checkpoint rather than starting over ...
    first_step = STEPS - len(resumed["losses"])
    assert first_step >= killed_at
    np.testing.assert_array_equal(resumed["losses"], straight["losses"][first_step:])
    # ... and ended on exactly the same parameters and optimizer state.
    _, a = _params(straight_dir, STEPS)
    _, b = _params(tmp_path, STEPS)
    _assert_trees_equal(a, b)
    # Every checkpoint left on disk restores; no temp directory survives the restart.
    names = os.listdir(os.path.join(tmp_path, "checkpoints"))
    assert all(n.isdigit() for n in names), names
    for step in _finalized_steps(tmp_path):
        _params(tmp_path, step)


def test_keep_latest_plus_best(uninterrupted):
    straight_dir, _, _ = uninterrupted
    # keep=2 latest, plus the best by neg_step (the earliest evaluated step, 2).
    assert _finalized_steps(straight_dir) == [2, STEPS - 2, STEPS]


def test_sigterm_saves_and_exits_zero(tmp_path):
    proc = _start(tmp_path, steps=200, extra=SLOW)
    deadline = time.time() + 1200
    while time.time() < deadline and not _finalized_steps(tmp_path):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    rc, summary, err = _finish(proc)
    assert rc == 0, err[-3000:]
    assert summary["stopped"] == "preempted" and summary["step"] < 200
    assert max(_finalized_steps(tmp_path)) == summary["step"]
    restored, _ = _params(tmp_path, summary["step"])
    assert restored


def test_non_finite_loss_stops_without_saving_it(tmp_path):
    # Example 37 has a NaN loss weight; it is met at some step of the first epoch (8 steps).
    bad = ["--gin.reverse_task.poison=37", "--gin.Checkpointer.save_every=1"]
    rc, summary, err = _finish(_start(tmp_path, steps=8, extra=bad))
    assert rc != 0 and summary is None
    assert "NonFiniteLossError" in err and "not finite" in err
    saved = _finalized_steps(tmp_path)
    assert saved and max(saved) < 8
    for step in saved:
        params, _ = _params(tmp_path, step)
        import jax
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_time_budget_stops_with_a_checkpoint_and_a_final_evaluation(tmp_path):
    # A zero budget is spent by the first step: the run must stop there, evaluate, and save.
    budget = SLOW + ["--gin.train.max_train_seconds=0", "--gin.train.eval_every=0"]
    rc, summary, err = _finish(_start(tmp_path, steps=200, extra=budget))
    assert rc == 0, err[-3000:]
    assert summary["stopped"] == "time_limit" and summary["step"] == 1
    assert _finalized_steps(tmp_path) == [1]
    # The checkpoint carries the metrics of an evaluation run on step 1.
    with open(os.path.join(tmp_path, "checkpoints", "1", "metrics", "metrics")) as f:
        assert json.load(f) == {"neg_step": -1.0}


def _truncate_largest_array_file(step_dir):
    """Cuts the biggest file of the step's `state` item in half: what a disk or a copy that
    stopped early leaves behind. The biggest one holds array chunks, so restoring must read it."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state"))
             for f in fs]
    biggest = max(files, key=os.path.getsize)
    os.truncate(biggest, os.path.getsize(biggest) // 2)


def test_corrupt_newest_checkpoint_falls_back_to_the_intact_one(t5_run, tmp_path):
    # A copy of the uninterrupted run: saved every 2 steps, the latest 2 kept plus the best
    # (step 2 by neg_step), it holds steps 2, 10 and 12.
    straight_dir, first, _ = t5_run
    run = tmp_path / "run"
    shutil.copytree(straight_dir, run)
    ckpt = os.path.join(run, "checkpoints")
    assert _finalized_steps(run) == [2, STEPS - 2, STEPS]
    reference = os.path.join(tmp_path, "newest_intact")
    shutil.copytree(os.path.join(ckpt, str(STEPS)), reference)
    _truncate_largest_array_file(os.path.join(ckpt, str(STEPS)))

    rc, resumed, err = _finish(_start(run, steps=STEPS + 2, extra=SLOW))
    assert rc == 0, err[-3000:]
    warning = [l for l in err.splitlines()
               if f"checkpoint step {STEPS}" in l and "cannot be restored" in l]
    assert len(warning) == 1 and f"resuming from step {STEPS - 2}" in warning[0], err[-3000:]
    print(warning[0])
    # It restarted from the step before with that step's data position: the same losses as
    # the first run, and a new newest step bit-identical to the one that was damaged.
    assert resumed["step"] == STEPS + 2 and len(resumed["losses"]) == 4
    np.testing.assert_array_equal(resumed["losses"][:2], first["losses"][STEPS - 2:])
    _assert_trees_equal(ocp.PyTreeCheckpointer().restore(os.path.join(reference, "state")),
                        _params(run, STEPS)[1])
    # The damaged step is kept aside, outside Orbax's step names: the new step could be
    # saved, and keep=2 counted only real steps (not the damaged one) beside the best.
    aside = [n for n in os.listdir(ckpt) if not n.isdigit()]
    assert len(aside) == 1 and aside[0].startswith(f"{STEPS}.corrupt-"), aside
    assert _finalized_steps(run) == [2, STEPS, STEPS + 2]
    for step in (2, STEPS, STEPS + 2):
        _params(run, step)


def test_no_intact_checkpoint_is_one_clear_error(tmp_path):
    rc, _, err = _finish(_start(tmp_path, steps=2))
    assert rc == 0, err[-3000:]
    ckpt = os.path.join(tmp_path, "checkpoints")
    steps = _finalized_steps(tmp_path)
    assert steps == [1, 2]  # the first step is saved too: no checkpoint exists yet
    for step in steps:
        _truncate_largest_array_file(os.path.join(ckpt, str(step)))
    rc, summary, err = _finish(_start(tmp_path, steps=4))
    assert rc != 0 and summary is None
    lines = [l for l in err.splitlines() if "UnrestorableCheckpoints: " in l]
    assert len(lines) == 1, err[-3000:]
    print(lines[0])
    paths = " ".join(os.path.join(ckpt, str(s)) for s in (2, 1))
    assert "step 2: " in lines[0] and "step 1: " in lines[0] and f"rm -r {paths}" in lines[0]
    assert len(lines[0]) < 1000
    # Nothing is moved or deleted when no step restores (a changed model config looks alike).
    assert sorted(os.listdir(ckpt)) == ["1", "2"]
