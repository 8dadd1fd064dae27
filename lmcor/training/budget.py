"""Training budgets in examples and the record of evaluations, for the trainer's loop.

`ExamplePlan` turns a budget in examples (or epochs) and an evaluation interval in examples
into steps, from the deterministic batch order; `EvalHistory` keeps MODEL_DIR/eval/history.jsonl,
which early stopping, the report's learning curves and the tables' columns read.
"""
import json
import os
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from lmcor.io_utils import atomic_write_text
from lmcor.training.logging import log_info
from lmcor.paths import EVAL_HISTORY



def _sum_over_hosts(values: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return values
    return np.sum(multihost_utils.process_allgather(values), axis=0)


class ExamplePlan:
    """Examples seen after each step (all hosts), and the step budget and evaluation steps they
    give: a table's rows train on the same number of examples, not of steps, since a packed row
    holds more short examples than long ones. Deterministic, so a resumed run plans the same."""

    def __init__(self, source, train_steps: int, train_examples: Optional[int],
                 eval_every_examples: int, train_epochs: Optional[float] = None):
        self.seen = np.cumsum(_sum_over_hosts(source.examples_per_step(train_steps)))
        self.end = train_steps
        self.budgeted = False  # True when the examples budget, not train_steps, ends the run
        if train_epochs is not None:
            if train_examples is not None or train_epochs <= 0:
                raise ValueError(f"train.train_epochs={train_epochs}: give a positive number of "
                                 f"epochs or train.train_examples, not both")
            epoch = int(_sum_over_hosts(np.array([source.num_examples()]))[0])
            train_examples = int(np.ceil(train_epochs * epoch))
            log_info("train_epochs=%g: %d examples (%d per epoch)", train_epochs,
                     train_examples, epoch)
        if train_examples is not None:
            if train_examples <= 0:
                raise ValueError(f"train.train_examples={train_examples} must be positive")
            if self.seen[-1] < train_examples:
                log_info("train_examples=%d is more than train_steps=%d steps hold (%d): the "
                         "run stops at train_steps", train_examples, train_steps,
                         int(self.seen[-1]))
            else:
                self.end = int(np.searchsorted(self.seen, train_examples)) + 1
                self.budgeted = True
        self.every = int(eval_every_examples)
        if self.every < 0:
            raise ValueError(f"train.eval_every_examples={self.every} must be >= 0")

    def examples(self, steps_done: int) -> int:
        return int(self.seen[steps_done - 1]) if steps_done > 0 else 0

    def evaluates(self, steps_done: int) -> bool:
        """After `steps_done` steps: has the count crossed a multiple of `every`, or is this
        the budget's last step (so a budget always ends with a validation score)?"""
        if not self.every:
            return False
        crossed = self.examples(steps_done) // self.every > self.examples(steps_done - 1) // self.every
        return crossed or steps_done == self.end


def read_history(model_dir: str) -> list:
    """MODEL_DIR/eval/history.jsonl's records (step, examples_seen, train_seconds, metrics),
    oldest first; empty when the run has none."""
    path = os.path.join(model_dir, EVAL_HISTORY)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class EvalHistory:
    """MODEL_DIR/eval/history.jsonl: one line per evaluation (step, examples seen, training
    seconds, metrics). It feeds early stopping, the report's learning curves and the table's
    "examples seen" and "wall time" columns. On resume, lines after the restored step (from a
    run killed before its checkpoint finished) are dropped."""

    def __init__(self, model_dir: str, start_step: int, main_host: bool):
        self.path = os.path.join(model_dir, EVAL_HISTORY)
        self.main = main_host
        self.records = [r for r in read_history(model_dir) if r["step"] <= start_step]
        if self.main:
            self._write()

    def _write(self):
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def add(self, record: dict):
        self.records.append(record)
        if self.main:
            self._write()

    def stalled(self, metric: Optional[str], mode: str, patience: Optional[int]) -> bool:
        """True when none of the last `patience` evaluations improved on the best before them."""
        if not patience or not metric or len(self.records) <= patience:
            return False
        values = [float(r["metrics"][metric]) for r in self.records]
        sign = 1.0 if mode == "max" else -1.0
        best_before = max(sign * v for v in values[:-patience])
        return all(sign * v <= best_before for v in values[-patience:])
