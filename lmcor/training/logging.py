"""Training logs: TensorBoard scalars and a tqdm bar, from host 0 only.

Other hosts write no event files, so N hosts never write N of them. On a local disk the event
file is written with tensorboard's record format and protos, without TensorFlow: a run on arrays
(not SeqIO tasks) then never imports it, seconds per process that the trainer's subprocess tests
pay many times. A URL (gs://...) goes through tensorboard's Writer, whose file layer is TF's.
"""
import logging
import os
import socket
import time
from typing import Dict

import jax
from tqdm import tqdm

log = logging.getLogger("lmcor.train")


class TrainLogger:
    def __init__(self, log_dir: str, total_steps: int, start_step: int, main_host: bool):
        self.main = main_host
        self.writer = _event_writer(log_dir) if main_host else None
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                        disable=not main_host, dynamic_ncols=True)
        self._t0 = time.perf_counter()
        self._tokens = 0.0

    def step(self, step: int, metrics: Dict[str, float], log_every: int):
        """Called once per step with host-side metrics; writes scalars every `log_every` steps."""
        self._tokens += float(metrics["target_tokens"])
        self.bar.update(1)
        if step % log_every:
            return
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        scalars = {k: float(v) for k, v in metrics.items() if k not in ("finite",)}
        scalars["target_tokens_per_second"] = self._tokens / elapsed
        self._write(step, scalars)
        self.bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{scalars['learning_rate']:.2e}",
                             tok_s=f"{scalars['target_tokens_per_second']:.0f}")
        self._t0, self._tokens = time.perf_counter(), 0.0

    def _write(self, step: int, scalars: Dict[str, float]):
        if self.writer is not None:
            self.writer.write(step, scalars)

    def scalars(self, step: int, values: Dict[str, float], prefix: str = ""):
        self._write(step, {prefix + k: float(v) for k, v in values.items()})
        if self.main:
            log.info("step %d: %s", step, values)

    def close(self):
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


class LocalEventFile:
    """One TensorBoard event file on a local disk: scalars as `simple_value`s, flushed after
    every `write` so that a killed run keeps what it logged."""

    def __init__(self, log_dir: str):
        from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: PLC0415
        from tensorboard.summary.writer.record_writer import RecordWriter  # noqa: PLC0415

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        os.makedirs(log_dir, exist_ok=True)
        # TensorBoard's naming: it reads every events.out.tfevents.* file of the folder.
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{id(self)}")
        self._records = RecordWriter(open(os.path.join(log_dir, name), "wb"))
        self._add(self._event(wall_time=time.time(), file_version="brain.Event:2"))
        self._records.flush()

    def _add(self, event):
        self._records.write(event.SerializeToString())

    def write(self, step: int, scalars: Dict[str, float]):
        values = [self._summary.Value(tag=tag, simple_value=float(value))
                  for tag, value in scalars.items()]
        self._add(self._event(wall_time=time.time(), step=int(step),
                              summary=self._summary(value=values)))
        self._records.flush()

    def close(self):
        self._records.close()


class _UrlEventFile:
    """tensorboard's Writer, for log folders that only TF's file layer can reach."""

    def __init__(self, log_dir: str):
        from tensorboard.summary import Writer  # noqa: PLC0415 (imports TensorFlow)

        self._writer = Writer(log_dir)

    def write(self, step: int, scalars: Dict[str, float]):
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, float(value), int(step))
        self._writer.flush()

    def close(self):
        self._writer.close()


def _event_writer(log_dir: str):
    return _UrlEventFile(log_dir) if "://" in log_dir else LocalEventFile(log_dir)


def log_info(msg: str, *args, main_only: bool = True):
    if not main_only or jax.process_index() == 0:
        log.info(msg, *args)


def setup_console_logging():
    """lmcor's INFO lines (resume, data, eval) on stderr; other libraries stay at WARNING."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("lmcor").setLevel(logging.INFO)
