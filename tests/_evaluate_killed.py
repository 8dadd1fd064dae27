"""`python tests/_evaluate_killed.py EVAL_DIR POOL MODEL_DIR N`: an evaluation of the LMCor row
on a pool's first 4 records, one per batch, whose process kills itself with SIGKILL as it starts
decoding batch N, as `kill -9` would at that moment. `config` is the evaluation, for the test
that reruns it."""
import os
import signal
import sys

from lmcor.evaluation import evaluate


def config(out_dir: str, pool: str, model_dir: str) -> "evaluate.EvalConfig":
    return evaluate.evaluation(task="wmt22", out_dir=out_dir, pool=pool, lmcor_dir=model_dir,
                               greedy_generator="Online-A", max_references=1,
                               max_examples=4, bootstrap_samples=20, batch_size=1)


def main(out_dir: str, pool: str, model_dir: str, kill_at: int) -> None:
    from lmcor.inference.corrector import Corrector

    decode_ids, calls = Corrector.decode_ids, []

    def dying(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return decode_ids(self, *args, **kwargs)

    Corrector.decode_ids = dying
    evaluate.evaluate(config(out_dir, pool, model_dir))


if __name__ == "__main__":
    main(*sys.argv[1:4], int(sys.argv[4]))
