"""Training logs: TensorBoard scalars (clu metric writers) and a tqdm bar, from host 0 only.

Other hosts get a writer that only logs to absl, so N hosts never write N event files.
"""
import logging
import time
from typing import Dict

import jax
from clu import metric_writers
from tqdm import tqdm

log = logging.getLogger("lmcor.train")


class TrainLogger:
    def __init__(self, log_dir: str, total_steps: int, start_step: int, main_host: bool):
        self.main = main_host
        self.writer = metric_writers.create_default_writer(
            log_dir, just_logging=not main_host, asynchronous=True)
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
        self.writer.write_scalars(step, scalars)
        self.bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{scalars['learning_rate']:.2e}",
                             tok_s=f"{scalars['target_tokens_per_second']:.0f}")
        self._t0, self._tokens = time.perf_counter(), 0.0

    def scalars(self, step: int, values: Dict[str, float], prefix: str = ""):
        self.writer.write_scalars(step, {prefix + k: float(v) for k, v in values.items()})
        if self.main:
            log.info("step %d: %s", step, values)

    def hparams(self, values: Dict[str, object]):
        self.writer.write_hparams({k: v for k, v in values.items()
                                   if isinstance(v, (int, float, str, bool))})

    def close(self):
        self.bar.close()
        self.writer.flush()
        self.writer.close()


def log_info(msg: str, *args, main_only: bool = True):
    if not main_only or jax.process_index() == 0:
        log.info(msg, *args)


def setup_console_logging():
    """lmcor's INFO lines (resume, data, eval) on stderr; other libraries stay at WARNING."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("lmcor").setLevel(logging.INFO)
