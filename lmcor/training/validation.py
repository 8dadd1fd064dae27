"""Periodic inference evaluation: beam-search the validation split of a SeqIO task with
`lmcor.decode`, post-process like SeqIO does, and score with the task's metric functions
(BLEU/chrF/ROUGE/GLEU from lmcor.metrics). Returns {metric: float} for logging and keep-best.
"""
from typing import Dict, List, Mapping, Optional

import gin
import jax
import numpy as np
import logging
from flax import linen as nn
from tqdm import tqdm

log = logging.getLogger(__name__)

from lmcor import decode
from lmcor import metrics
from lmcor.training.protocol import TrainModel


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _local_params(params):
    """Params every host can read on its own: gathered across hosts when the mesh spans several
    (each host then decodes the whole split; only host 0 logs the result)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return jax.device_put(multihost_utils.process_allgather(params, tiled=True))
    return params


@gin.configurable
class Evaluator:
    def __init__(self, task: str = gin.REQUIRED, feature_lengths: Mapping[str, int] = gin.REQUIRED,
                 split: str = "validation", max_examples: Optional[int] = None,
                 batch_size: int = 16, beam_size: int = 4, alpha: float = 0.6,
                 max_decode_tokens: int = 128, length_bucket: int = 32, bos_id: int = 2,
                 interval_metric: Optional[str] = None, widen_vocab: bool = True,
                 order_by_length: bool = False):
        self.task_name, self.split, self.max_examples = task, split, max_examples
        self.feature_lengths = dict(feature_lengths)
        self.batch_size, self.length_bucket, self.bos_id = batch_size, length_bucket, bos_id
        # A metric to also give a bootstrap 95% interval for (e.g. "bleu"): validation sets
        # are small, and a selection between checkpoints should show how far apart they are.
        self.interval_metric = interval_metric
        self.config = decode.DecodeConfig(max_new_tokens=max_decode_tokens, beam_size=beam_size,
                                          alpha=alpha)
        # A task-vocabulary model decodes validation as the table's test decode does, with its
        # vocabulary widened by the pieces of the inputs (Corrector.correct), so that the
        # checkpoint kept is the best at what the table measures.
        self.widen_vocab = widen_vocab
        self.order_by_length = order_by_length  # as corrector_settings.order_by_length
        self._widened = None  # (task-vocabulary adapter, its widened adapter), kept: no recompile
        self._examples: Optional[List[dict]] = None

    def examples(self) -> List[dict]:
        if self._examples is None:
            import seqio
            self.task = seqio.get_mixture_or_task(self.task_name)
            ds = self.task.get_dataset(self.feature_lengths, split=self.split, shuffle=False,
                                       num_epochs=1, use_cached=False)
            self._examples = []
            for ex in ds.as_numpy_iterator():
                self._examples.append(ex)
                if self.max_examples and len(self._examples) >= self.max_examples:
                    break
            if not self._examples:
                raise ValueError(f"evaluation: {self.task_name}:{self.split} has no examples")
        return self._examples

    def _prompts(self, lm) -> List[List[int]]:
        encdec = decode.is_encdec(lm)
        out = []
        for ex in self.examples():
            ids = [int(t) for t in ex["inputs"]]
            if not encdec:  # the prefix-LM converter feeds BOS + inputs without their EOS
                ids = [self.bos_id] + (ids[:-1] if ids and ids[-1] == lm.eos_id else ids)
            out.append(ids)
        return out

    def predict(self, model: TrainModel, params) -> List[str]:
        lm = model.decode_adapter()
        params = model.decode_params(_local_params(nn.unbox(params)))
        prompts = self._prompts(lm)
        lm, params = self._widen(lm, params, model.base_embedding, prompts)
        vocab = self.task.output_features["targets"].vocabulary
        order = decode.length_order(prompts, self.order_by_length)
        prompts = [prompts[i] for i in order]
        texts: List[str] = []
        encdec = decode.is_encdec(lm)
        for start in tqdm(range(0, len(prompts), self.batch_size), desc="eval", unit="batch",
                          disable=jax.process_index() != 0, leave=False):
            chunk = prompts[start:start + self.batch_size]
            batch = decode.pad_prompts(chunk, encdec=encdec, pad_id=int(lm.pad_id),
                                       bucket=self.length_bucket, rows=self.batch_size)
            dec = decode.decode_batch(lm, params, batch, self.config)
            texts += decode.texts_of(vocab, dec, [int(lm.eos_id)], ())[:len(chunk)]
        return decode.in_input_order(texts, order)

    def _widen(self, lm, params, base_embedding, prompts):
        task_map = getattr(lm, "vocab_map", None)
        if task_map is None:
            return lm, params
        report = task_map.oov_of(prompts)
        if self.widen_vocab and base_embedding is not None:
            if self._widened is None or self._widened[0] is not lm:
                from lmcor.models.vocab_widening import widen_task_vocab
                wide, params = widen_task_vocab(lm, params, base_embedding, prompts)
                self._widened = (lm, wide)
            elif self._widened[1] is not lm:
                from lmcor.models.vocab_widening import rewiden
                params = rewiden(lm, self._widened[1], params, base_embedding)
            lm = self._widened[1]
        report["widened_by"] = lm.vocab_map.size - task_map.size
        log.info("%s:%s input ids outside the task vocabulary: %s (%s)", self.task_name,
                 self.split, report, "read from the base embedding" if report["widened_by"]
                 else "read as unknown")
        return lm, params

    def __call__(self, model: TrainModel, params, step: int) -> Dict[str, float]:
        predictions = self.predict(model, params)
        post = self.task.postprocess_fn or (lambda x, example=None, is_target=False: x)
        preds = [post(p, example=ex, is_target=False) for p, ex in zip(predictions, self.examples())]
        targets = [post(_text(ex["targets_pretokenized"]), example=ex, is_target=True)
                   for ex in self.examples()]
        results: Dict[str, float] = {}
        for fn in self.task.predict_metric_fns:
            results.update({k: float(np.asarray(v)) for k, v in fn(targets, preds).items()})
        if self.interval_metric:
            results.update(metrics.seqio_interval(self.interval_metric, targets, preds))
        log.info("eval step %d on %s:%s (%d examples): %s", step, self.task_name, self.split,
                     len(preds), results)
        return results
