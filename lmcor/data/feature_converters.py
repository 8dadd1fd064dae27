"""Feature converters: a decoder-only (prefix-LM) converter for Gemma correctors.

T5 correctors use `seqio.EncDecFeatureConverter` unchanged. A decoder-only corrector reads one
causal sequence `[BOS] inputs targets EOS` and is trained only on the target part:

    decoder_target_tokens  inputs targets EOS        (what is predicted at each position)
    decoder_input_tokens   BOS inputs targets        (what is fed: targets shifted right)
    decoder_loss_weights   0 ... 0 1 ... 1 1         (targets and their EOS only)
    decoder_segment_ids    1 ... 1 (2 ... for the next packed example, 0 = padding)
    decoder_positions      0 1 2 ... restarting at every packed example

Unlike seqio.PrefixLMFeatureConverter, the segment ids and positions are always present (Gemma
takes them even unpacked), the BOS is the model's own (Gemma: 2) rather than 0, and the EOS that
the task appends to `inputs` is dropped, because mid-sequence EOS would teach the model to stop
where the answer should start. The attention stays causal over the whole sequence.
"""
from typing import Mapping

import gin
import seqio
import tensorflow as tf
from seqio import utils

_INT = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)


@gin.configurable
class DecoderOnlyFeatureConverter(seqio.FeatureConverter):
    """inputs + targets -> one causal sequence; loss on target tokens only; optional packing."""

    TASK_FEATURES = {"inputs": _INT, "targets": _INT}
    MODEL_FEATURES = {name: _INT for name in (
        "decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
        "decoder_segment_ids", "decoder_positions")}
    PACKING_FEATURE_DTYPES = {}  # segment ids / positions are model features even unpacked

    def __init__(self, pack: bool = True, bos_id: int = 0, eos_id: int = 1,
                 drop_inputs_eos: bool = True, **kwargs):
        super().__init__(pack=pack, bos_id=bos_id, **kwargs)
        self._eos_id = eos_id
        self._drop_inputs_eos = drop_inputs_eos

    def _concat(self, ex: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
        inputs, targets = ex["inputs"], ex["targets"]
        if self._drop_inputs_eos:
            ends_with_eos = tf.reduce_any(tf.equal(inputs[-1:], self._eos_id))  # False if empty
            inputs = tf.cond(ends_with_eos, lambda: inputs[:-1], lambda: inputs)
        # Roles are 1 (prompt) / 2 (target), never 0: packing treats zeros as padding.
        return {"tokens": tf.concat([inputs, targets], 0),
                "role": tf.concat([tf.ones_like(inputs), 2 * tf.ones_like(targets)], 0)}

    def _convert_example(self, ex: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
        tokens = ex["tokens"]
        if self.pack:
            segments, positions = ex["tokens_segment_ids"], ex["tokens_positions"]
        else:
            segments = tf.cast(tf.not_equal(tokens, 0), tf.int32)
            positions = (tf.cumsum(segments) - 1) * segments
        shifted = utils.make_autoregressive_inputs(tokens, sequence_id=segments, bos_id=self.bos_id)
        return {"decoder_target_tokens": tokens,
                "decoder_input_tokens": shifted * tf.cast(segments > 0, tf.int32),
                "decoder_loss_weights": tf.cast(tf.equal(ex["role"], 2), tf.int32),
                "decoder_segment_ids": segments, "decoder_positions": positions}

    def _convert_features(self, ds: tf.data.Dataset,
                          task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        length = self.get_model_feature_lengths(task_feature_lengths)["decoder_target_tokens"]
        ds = ds.map(self._concat, num_parallel_calls=tf.data.AUTOTUNE)
        # Each task feature is already within its own length, so nothing is trimmed here.
        ds = self._pack_or_pad(ds, {"tokens": length, "role": length})
        return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        length = task_feature_lengths["inputs"] + task_feature_lengths["targets"]
        return {name: length for name in self.MODEL_FEATURES}
