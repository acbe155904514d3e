import math

import numpy as np
import pytest
import tensorflow as tf

from tests import ltr_reference as ref
from worker.modeling.losses import ltr
from worker.modeling.losses.reduction import Reduction, compute_weighted_loss


def test_label_valid_fn():
    np.testing.assert_array_equal(
        ltr.label_valid_fn([[0.0, -1.0, 2.0], [-0.5, 1.0, 0.0]]).numpy(), [[1, 0, 1], [0, 1, 1]]
    )


def test_sort_by_scores_with_ties_and_topn():
    scores = [[1.0, 3.0, 1.0, 3.0, 0.0], [0.5, -1.0, 2.0, 2.0, 7.0]]
    features = [[10, 11, 12, 13, 14], [20, 21, 22, 23, 24]]
    expected = [[[features[b][k] for k in ref.order_by(scores[b])] for b in range(2)]]
    (got,) = ltr.sort_by_scores(scores, [features])
    np.testing.assert_array_equal(got.numpy(), expected[0])
    got_scores, got_features = ltr.sort_by_scores(scores, [scores, features], topn=2)
    np.testing.assert_array_equal(got_features.numpy(), np.array(expected[0])[:, :2])
    assert got_scores.shape == (2, 2)
    assert ltr.sort_by_scores(scores, [features], topn=99)[0].shape == (2, 5)
    with pytest.raises(ValueError, match="scores must be"):
        ltr.sort_by_scores([1.0, 2.0], [[1, 2]])
    with pytest.raises(ValueError, match="features_list\\[0\\]"):
        ltr.sort_by_scores(scores, [[1, 2]])


def test_organize_valid_indices_without_shuffle_keeps_order():
    is_valid = np.array([[True, False, True, True], [False, False, True, False]])
    got = ltr.organize_valid_indices(is_valid, shuffle=False).numpy()
    for b in range(2):
        valid = [k for k in range(4) if is_valid[b, k]]
        assert list(got[b, :, 0]) == [b] * 4
        assert list(got[b, : len(valid), 1]) == valid
        assert sorted(got[b, len(valid) :, 1]) == [k for k in range(4) if not is_valid[b, k]]
    with pytest.raises(ValueError, match="bool"):
        ltr.organize_valid_indices(tf.zeros([2, 2]))


def test_shuffle_valid_indices_is_a_uniform_permutation_of_valid_first():
    is_valid = np.array([[True, True, False, True, False]])
    firsts = []
    tf.random.set_seed(5)
    for _ in range(300):
        idx = ltr.shuffle_valid_indices(is_valid, seed=3).numpy()[0, :, 1]
        assert sorted(idx[:3]) == [0, 1, 3] and sorted(idx[3:]) == [2, 4]
        firsts.append(idx[0])
    counts = np.bincount(firsts, minlength=4)[[0, 1, 3]]
    assert counts.min() > 60  # each valid entry leads about 1/3 of the time
    tf.random.set_seed(5)
    again = ltr.shuffle_valid_indices(is_valid, seed=3).numpy()[0, 0, 1]
    assert again == firsts[0]


def test_reshape_first_ndims_dense_and_sparse():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(ltr.reshape_first_ndims(tf.constant(x), 2, [6]).numpy(), x.reshape(6, 4))
    sparse = tf.sparse.from_dense(tf.constant(x))
    got = ltr.reshape_first_ndims(sparse, 2, [6])
    assert isinstance(got, tf.SparseTensor)
    np.testing.assert_array_equal(tf.sparse.to_dense(got).numpy(), x.reshape(6, 4))
    with pytest.raises(ValueError, match="first_ndims=3"):
        ltr.reshape_first_ndims(tf.zeros([2, 3]), 3, [6])


def test_approx_ranks():
    logits = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    got = ltr.approx_ranks(logits, alpha=4.0).numpy()
    for b in range(3):
        for i in range(5):
            expected = 0.5 + sum(ref.sigmoid(4.0 * (float(logits[b, j]) - float(logits[b, i]))) for j in range(5))
            assert got[b, i] == pytest.approx(expected, rel=1e-5)
    sharp = ltr.approx_ranks([[3.0, 1.0, 2.0]], alpha=1000.0).numpy()
    np.testing.assert_allclose(sharp, [[1.0, 3.0, 2.0]], atol=1e-5)


def test_inverse_max_dcg():
    labels = np.array([[0.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 1.0, 1.0]], np.float32)
    got = ltr.inverse_max_dcg(labels).numpy()
    assert got.shape == (3, 1)
    for b in range(3):
        idcg = ref.ideal_dcg(list(labels[b]), ref.ndcg_gain, ref.ln_discount)
        assert got[b, 0] == pytest.approx(1.0 / idcg if idcg else 0.0, rel=1e-6)
    top1 = ltr.inverse_max_dcg(labels, gain_fn=lambda x: x, rank_discount_fn=lambda r: 1.0 / r, topn=1).numpy()
    np.testing.assert_allclose(top1[:, 0], [0.5, 0.0, 1.0 / 3.0], rtol=1e-6)


def test_get_batch_idx_size():
    logits = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], np.float32)
    labels = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0], np.float32)
    rank_id = np.array([7, 3, 7, 9, 3, 7])
    logits_idx, label_idx, mask_idx, unique_idx = ltr.get_batch_idx_size(logits, labels, rank_id, "g")
    order = []
    for r in rank_id:
        if r not in order:
            order.append(r)
    rows = {r: [k for k in range(6) if rank_id[k] == r] for r in order}
    width = max(len(v) for v in rows.values())
    expected_logits = np.zeros((len(order), width), np.float32)
    expected_labels = np.zeros((len(order), width), np.float32)
    expected_mask = np.zeros((6, 6), np.float32)
    for row, r in enumerate(order):
        for col, k in enumerate(rows[r]):
            expected_logits[row, col], expected_labels[row, col], expected_mask[row, col] = logits[k], labels[k], 1.0
    np.testing.assert_array_equal(logits_idx.numpy(), expected_logits)
    np.testing.assert_allclose(label_idx.numpy(), expected_labels - 1e-6, atol=1e-7)
    np.testing.assert_array_equal(mask_idx.numpy(), expected_mask)
    np.testing.assert_array_equal(unique_idx.numpy(), [rows[r][0] for r in order])
    with pytest.raises(ValueError, match="rank_id"):
        ltr.get_batch_idx_size(logits, labels, rank_id[:4], "g")


def test_lambda_weight_objects_against_loops():
    labels = np.array([[3.0, 0.0, 1.0, -1.0, 2.0], [1.0, 1.0, 0.0, 2.0, -1.0]], np.float32)
    cases = [
        (
            ltr.create_ndcg_lambda_weight(topn=2, smooth_fraction=0.3),
            ref.DCGRef(2, ref.ndcg_gain, ref.ln_discount, True, 0.3),
        ),
        (ltr.create_reciprocal_rank_lambda_weight(), ref.DCGRef(normalized=True)),
        (ltr.PrecisionLambdaWeight(topn=3), ref.PrecisionRef(3)),
    ]
    for ours, theirs in cases:
        got = ours.pair_weights(labels).numpy()
        for b in range(2):
            for i in range(5):
                for j in range(5):
                    assert got[b, i, j] == pytest.approx(theirs.pair(list(labels[b]), i, j), rel=1e-5, abs=1e-7)
        if isinstance(theirs, ref.DCGRef):
            individual = ours.individual_weights(labels).numpy()
            for b in range(2):
                np.testing.assert_allclose(individual[b], theirs.individual(list(labels[b])), rtol=1e-5, atol=1e-7)
    assert ltr.IdentityLambdaWeight().pair_weights(labels) == 1.0
    np.testing.assert_array_equal(ltr.IdentityLambdaWeight().individual_weights(labels).numpy(), labels)
    p_mle = ltr.create_p_list_mle_lambda_weight(5)
    np.testing.assert_allclose(p_mle.individual_weights(labels).numpy(), [[15.0, 7.0, 3.0, 1.0, 0.0]] * 2)
    np.testing.assert_array_equal(p_mle.pair_weights(labels), labels)


def test_lambda_weight_validation():
    with pytest.raises(ValueError, match="smooth_fraction"):
        ltr.DCGLambdaWeight(smooth_fraction=1.5)
    with pytest.raises(ValueError, match="topn"):
        ltr.PrecisionLambdaWeight(topn=0)
    with pytest.raises(ValueError, match="sorted_labels"):
        ltr.create_ndcg_lambda_weight().pair_weights(tf.zeros([2]))
    with pytest.raises(TypeError):
        ltr._LambdaWeight()


def test_reduction_names_match_tensorflow():
    assert set(Reduction.all()) == set(tf.compat.v1.losses.Reduction.all())
    for name in ("NONE", "SUM", "MEAN", "SUM_OVER_BATCH_SIZE", "SUM_BY_NONZERO_WEIGHTS", "SUM_OVER_NONZERO_WEIGHTS"):
        assert getattr(Reduction, name) == getattr(tf.compat.v1.losses.Reduction, name)


@pytest.mark.parametrize("reduction", tf.compat.v1.losses.Reduction.all())
def test_compute_weighted_loss_matches_tf_compat_v1(reduction):
    rng = np.random.default_rng(1)
    losses = rng.uniform(size=(4, 3)).astype(np.float32)
    item = rng.uniform(size=(4, 3)).astype(np.float32)
    item[0] = 0.0
    for weights in (1.0, 0.0, np.array([[0.0], [1.0], [2.0], [0.5]], np.float32), item):
        expected = tf.compat.v1.losses.compute_weighted_loss(losses, weights, reduction=reduction).numpy()
        np.testing.assert_allclose(compute_weighted_loss(losses, weights, reduction).numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="Invalid reduction"):
        compute_weighted_loss(losses, 1.0, "bogus")


def test_log_epsilon_constant():
    assert ltr._EPSILON == 1e-10
    assert math.log(ltr._EPSILON) == pytest.approx(ref.LOG_EPS)
