"""The trainer's TensorBoard event files: TensorBoard's own reader reads them, a run killed
before closing keeps what it logged, and a local log folder needs no TensorFlow."""
import os
import subprocess
import sys

from lmcor.training.logging import TrainLogger

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tensorboard_reads_the_scalars_before_the_file_is_closed(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TrainLogger(str(tmp_path), total_steps=4, start_step=0, main_host=True)
    for step in (1, 2, 3, 4):
        logger.step(step, {"loss": 10.0 / step, "learning_rate": 0.5, "target_tokens": 6.0},
                    log_every=2)
    logger.scalars(4, {"bleu": 31.25}, prefix="eval/")
    # Not closed: what a SIGKILL leaves. Every write was flushed.
    events = EventAccumulator(str(tmp_path)).Reload()
    loss = events.Scalars("loss")
    assert [(e.step, e.value) for e in loss] == [(2, 5.0), (4, 2.5)]
    assert [(e.step, e.value) for e in events.Scalars("eval/bleu")] == [(4, 31.25)]
    assert [e.value for e in events.Scalars("learning_rate")] == [0.5, 0.5]
    logger.close()


def test_other_hosts_write_no_event_file(tmp_path):
    logger = TrainLogger(str(tmp_path / "host1"), total_steps=1, start_step=0, main_host=False)
    logger.step(1, {"loss": 1.0, "learning_rate": 0.1, "target_tokens": 1.0}, log_every=1)
    logger.close()
    assert not (tmp_path / "host1").exists()


def test_a_local_log_folder_imports_no_tensorflow(tmp_path):
    code = ("import sys\n"
            "from lmcor.training.logging import TrainLogger\n"
            f"log = TrainLogger({str(tmp_path)!r}, 1, 0, True)\n"
            "log.step(1, {'loss': 1.0, 'learning_rate': 0.1, 'target_tokens': 1.0}, 1)\n"
            "log.close()\n"
            "print('tensorflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "False"
    assert any(n.startswith("events.out.tfevents.") for n in os.listdir(tmp_path))
