"""Rows that read one input once for all its references, and length-grouped batches of them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmcor.models import partitioning
from lmcor.training import batches
from lmcor.training import grouped_rows
from lmcor.training.builders import gemma_model
from lmcor.training.step import token_losses

BOS = 2


def _separate_rows(groups, length):
    """One zero-padded row per (input, reference), as the prefix-LM trains on it alone:
    fed [BOS] + (input + target)[:-1], predicting input + target, loss on the target."""
    rows = []
    for inputs, targets in groups:
        for target in targets:
            seq = list(inputs) + list(target)
            fed = [BOS] + seq[:-1]
            w = [0.0] * len(inputs) + [1.0] * len(target)
            rows.append((fed, seq, w))
    out = {k: np.zeros((len(rows), length), np.int32) for k in
           ("decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
            "decoder_positions")}
    out["decoder_loss_weights"] = np.zeros((len(rows), length), np.float32)
    for i, (fed, seq, w) in enumerate(rows):
        n = len(fed)
        out["decoder_input_tokens"][i, :n] = fed
        out["decoder_target_tokens"][i, :n] = seq
        out["decoder_loss_weights"][i, :n] = w
        out["decoder_segment_ids"][i, :n] = 1
        out["decoder_positions"][i, :n] = np.arange(n)
    return out


def _groups(rng, n_groups=3):
    groups = []
    for _ in range(n_groups):
        inputs = tuple(rng.integers(3, 500, rng.integers(1, 12)).tolist())
        targets = [tuple(rng.integers(3, 500, rng.integers(1, 7)).tolist()) + (1,)
                   for _ in range(rng.integers(1, 4))]
        groups.append((inputs, targets))
    return groups


def test_a_grouped_row_trains_exactly_as_its_separate_examples():
    # The tiny preset's sliding window is 4 tokens: inputs up to 11 tokens exercise the local
    # layers' window as well as the global ones.
    rng = np.random.default_rng(0)
    groups = _groups(rng)
    model = gemma_model(preset="tiny", lora_rank=4, freeze_embeddings=True, freeze_layers=2)
    params = jax.tree.map(lambda x: x + 0.01, model.load_pretrained())  # non-zero LoRA B
    frozen = model.place_frozen(partitioning.make_mesh(1, 1))[0]
    grouped = grouped_rows.grouped_rows(groups, 40, BOS)
    assert len(grouped["decoder_input_tokens"]) == len(groups)  # every group fits one row
    length, k = grouped_rows.batch_shape(grouped, (16, 32, 40), min_loss_positions=8)
    batch = {n: jnp.asarray(v) for n, v in grouped_rows.cut_batch(grouped, length, k).items()}
    separate = {n: jnp.asarray(v) for n, v in _separate_rows(groups, 24).items()}

    def loss_grads(b):
        def objective(p):
            ce, _, w = token_losses(*model.loss_inputs(p, b, frozen=frozen))
            return ce, w
        return jax.value_and_grad(objective, has_aux=True)(params)

    (ce_g, w_g), grads_g = loss_grads(batch)
    (ce_s, w_s), grads_s = loss_grads(separate)
    assert float(w_g) == float(w_s) == sum(len(t) for _, ts in groups for t in ts)
    np.testing.assert_allclose(float(ce_g), float(ce_s), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads_g), jax.tree.leaves(grads_s)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_groups_that_do_not_fit_a_row_repeat_their_input_and_count_every_reference():
    groups = [((5, 6, 7), [(8, 9, 1), (10, 1), (11, 12, 13, 1)])]
    rows = grouped_rows.grouped_rows(groups, 8, BOS)
    # 3 + 3 + 2 fits 8; the third reference (4 tokens) opens a second row with the input again.
    assert rows["decoder_input_tokens"].tolist() == [
        [BOS, 5, 6, 7, 8, 9, 7, 10], [BOS, 5, 6, 7, 11, 12, 13, 0]]
    assert rows["decoder_positions"].tolist() == [[0, 1, 2, 3, 4, 5, 3, 4],
                                                  [0, 1, 2, 3, 4, 5, 6, 0]]
    assert rows["decoder_prefix_ids"].tolist() == [[0, 0, 0, 1, 1, 1, 1, 1],
                                                   [0, 0, 0, 1, 1, 1, 1, 0]]
    assert batches.row_examples(rows).tolist() == [2, 1]
    with pytest.raises(ValueError, match="does not fit a row of 5"):
        grouped_rows.grouped_rows(groups, 5, BOS)


def test_batch_shape_is_the_longest_rows_bucket_and_a_power_of_two_of_loss_positions():
    rows = grouped_rows.grouped_rows([((5, 6, 7), [(8, 9, 1), (10, 1)]), ((4,), [(3,) * 9])],
                                     16, BOS)
    # Row lengths 8 and 10 -> bucket 12; 9 weighted positions at most -> 16, capped at 12.
    assert grouped_rows.batch_shape(rows, (4, 12, 16), min_loss_positions=4) == (12, 12)
    assert grouped_rows.batch_shape(rows, (4, 12, 24), min_loss_positions=4) == (12, 12)
    assert grouped_rows.batch_shape(rows, (20,), min_loss_positions=4) == (20, 16)
    assert grouped_rows.batch_shape(rows, (20,), min_loss_positions=32) == (20, 20)
    with pytest.raises(ValueError, match="longer than the largest length bucket 8"):
        grouped_rows.batch_shape(rows, (4, 8))


def test_group_examples_joins_consecutive_references_of_one_input_and_drops_its_eos():
    examples = [([4, 5, 1], [7, 1]), ([4, 5, 1], [8, 1]), ([6, 1], [9, 1]), ([4, 5, 1], [3, 1])]
    assert grouped_rows.group_examples(examples) == [
        ((4, 5), [(7, 1), (8, 1)]), ((6,), [(9, 1)]), ((4, 5), [(3, 1)])]


@pytest.mark.parametrize("rows,batch", [(23, 4), (16, 4), (7, 3)])
def test_length_grouped_epochs_hold_every_row_once_and_batches_of_like_lengths(rows, batch):
    rng = np.random.default_rng(rows)
    lengths = rng.integers(1, 60, rows)
    arrays = {"decoder_segment_ids": (np.arange(64)[None] < lengths[:, None]).astype(np.int32),
              "decoder_loss_weights": (np.arange(64)[None] < lengths[:, None]).astype(np.float32),
              "row": np.arange(rows)[:, None].repeat(64, 1).astype(np.int32)}
    source = batches.BatchSource({0: arrays}, 1, batch, seed=3, length_buckets=(16, 32, 64))
    epochs = 4
    steps = -(-epochs * rows // batch)
    seen = np.concatenate([source.batch(t)["row"][:, 0] for t in range(steps)])
    for e in range(epochs):
        assert sorted(seen[e * rows:(e + 1) * rows].tolist()) == list(range(rows))
    # Each batch is cut to the bucket of its longest row, and no row is cut short.
    for t in range(steps):
        b = source.batch(t)
        longest = int(lengths[b["row"][:, 0]].max())
        assert b["decoder_segment_ids"].shape[1] == grouped_rows.bucket(longest, (16, 32, 64))
    # A fresh source (a resumed run) gives the same batches.
    again = batches.BatchSource({0: arrays}, 1, batch, seed=3, length_buckets=(16, 32, 64))
    assert all((again.batch(t)["row"] == source.batch(t)["row"]).all() for t in range(steps))
    # Grouping pays: less padding than the same epochs' rows in shuffled order.
    plain = batches.BatchSource({0: arrays}, 1, batch, seed=3)
    widths = lambda s: sum(int(lengths[s.batch(t)["row"][:, 0]].max()) for t in range(steps))
    assert widths(source) <= widths(plain)
