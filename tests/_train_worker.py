"""Runs the trainer in a subprocess for the resume / SIGTERM / multi-host tests.

The mechanics under test (checkpoints, resume, collectives) do not depend on what the data
means, so the worker trains the tiny T5 on a small synthetic "reverse the input" task that it
registers with Gin as `reverse_task`. Usage:

    python tests/_train_worker.py MODEL_DIR STEPS [--gin.X=Y ...] [--coordinator_address=...]

Prints the trainer's summary (final step, every step's loss, how it stopped) as one JSON line.
"""
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gin  # noqa: E402
import numpy as np  # noqa: E402

from lmcor.cli import train_command as train_lib  # noqa: E402
from lmcor.training import batches  # noqa: E402

BASE_BINDINGS = (
    "train.model = @t5_model()",
    't5_model.preset = "tiny"',
    "train.data = @reverse_task",
    "train.batch_size = 8",
    "train.log_every = 1",
    "Checkpointer.save_every = 2",
    "Checkpointer.keep = 2",
    'make_schedule.name = "constant"',
    "make_schedule.learning_rate = 0.01",
)


def reverse_arrays(n: int = 64, length: int = 10, vocab: int = 256, seed: int = 1234):
    """Encoder: random tokens; target: the same tokens reversed, then EOS (id 1)."""
    rng = np.random.default_rng(seed)
    enc = np.zeros((n, length), np.int32)
    tgt = np.zeros((n, length), np.int32)
    for i, m in enumerate(rng.integers(3, length, n)):
        toks = rng.integers(2, vocab, m)
        enc[i, :m], tgt[i, :m], tgt[i, m] = toks, toks[::-1], 1
    dec_in = np.concatenate([np.zeros((n, 1), np.int32), tgt[:, :-1]], axis=1)
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
            "decoder_target_tokens": tgt, "decoder_loss_weights": (tgt > 0).astype(np.float32)}


@gin.configurable
def slow_eval(model, params, step, seconds: float = 0.3):
    """Stands in for a decode-based evaluation: takes wall time (so a test can kill the run
    between checkpoints) and reports a metric that keep-best checkpointing can rank."""
    time.sleep(seconds)
    return {"neg_step": -float(step)}


@gin.configurable
def reverse_task(num_shards, owned_shards, num_examples: int = 64, poison: int = -1):
    """`poison=i` gives example i a NaN loss weight: corrupt data that must stop the run."""
    arrays = reverse_arrays(num_examples)
    if poison >= 0:
        arrays["decoder_loss_weights"][poison, 0] = np.nan
    return batches.split_shards(arrays, num_shards, owned_shards)


@gin.configurable
def reverse_prefix_task(num_shards, owned_shards, num_examples: int = 64, vocab: int = 300):
    """The reverse task as prefix-LM rows for a decoder-only model: the input tokens, then
    their reversal, with the loss on the reversal only."""
    arrays = reverse_arrays(num_examples, vocab=vocab)
    enc, tgt = arrays["encoder_input_tokens"], arrays["decoder_target_tokens"]
    rows = np.concatenate([enc, tgt], axis=1)
    weights = np.concatenate([np.zeros_like(enc, np.float32), (tgt > 0).astype(np.float32)], 1)
    shifted = np.concatenate([rows[:, 1:], np.zeros((len(rows), 1), np.int32)], axis=1)
    return batches.split_shards({"decoder_input_tokens": rows, "decoder_target_tokens": shifted,
                                  "decoder_loss_weights": weights}, num_shards, owned_shards)


def main(argv):
    model_dir, steps, rest = argv[0], int(argv[1]), argv[2:]
    bindings = [f"--gin.{b}" for b in BASE_BINDINGS]
    bindings += [f"--gin.train.model_dir={model_dir!r}", f"--gin.train.train_steps={steps}"]
    summary = train_lib.run(bindings + rest)
    print("SUMMARY " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
