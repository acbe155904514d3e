import numpy as np
import pytest
import tensorflow as tf

from worker.modeling.layers.utils import (
    DCNType,
    MergeType,
    check_dim,
    continuous_topk,
    dim_size,
    gumbel_keys,
    merge_tensor_list,
    sample_subset,
)

RNG = np.random.default_rng(7)
X3 = RNG.normal(size=(4, 3, 5)).astype(np.float32)
X2 = RNG.normal(size=(4, 6)).astype(np.float32)


def test_constants():
    assert (MergeType.CONCAT, MergeType.STACK, MergeType.NONE) == ("concat", "stack", None)
    assert (DCNType.VECTOR, DCNType.MATRIX, DCNType.MIXED) == ("vector", "matrix", "mixed")


def test_check_dim_and_dim_size():
    assert check_dim(None) == -1
    assert check_dim(5) == 5
    assert check_dim(tf.compat.v1.Dimension(7)) == 7
    assert check_dim(tf.compat.v1.Dimension(None)) == -1
    with pytest.raises(TypeError, match="'a'"):
        check_dim("a")
    assert dim_size(tf.constant(X2), 1) == 6

    @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32)])
    def batch(x):
        size = dim_size(x, 0)
        assert isinstance(size, tf.Tensor)
        return size

    assert int(batch(tf.constant(X2))) == 4


def test_merge_single_3d():
    stacked = merge_tensor_list(tf.constant(X3), MergeType.STACK)
    np.testing.assert_array_equal(stacked.numpy(), X3)
    kept = merge_tensor_list(tf.constant(X3), MergeType.STACK, keep_list=True)
    assert isinstance(kept, list) and len(kept) == 1
    concat = merge_tensor_list(tf.constant(X3), MergeType.CONCAT)
    expected = np.array([np.concatenate([X3[b, f] for f in range(3)]) for b in range(4)])
    np.testing.assert_array_equal(concat.numpy(), expected)
    unstacked = merge_tensor_list(tf.constant(X3), MergeType.NONE)
    assert len(unstacked) == 3
    for f in range(3):
        np.testing.assert_array_equal(unstacked[f].numpy(), X3[:, f, :])


def test_merge_single_2d():
    assert merge_tensor_list(tf.constant(X2)).shape == (4, 6)
    kept = merge_tensor_list(tf.constant(X2), MergeType.STACK, keep_list=True)
    assert isinstance(kept, list) and kept[0].shape == (4, 6)
    stacked = merge_tensor_list(tf.constant(X2), MergeType.STACK, num_feature=2)
    np.testing.assert_array_equal(stacked.numpy(), np.stack([X2[:, :3], X2[:, 3:]], axis=1))
    np.testing.assert_array_equal(merge_tensor_list(tf.constant(X2), MergeType.CONCAT, num_feature=2).numpy(), X2)
    parts = merge_tensor_list(tf.constant(X2), MergeType.NONE, num_feature=3)
    assert len(parts) == 3
    for f in range(3):
        np.testing.assert_array_equal(parts[f].numpy(), X2[:, 2 * f : 2 * f + 2])
    with pytest.raises(ValueError, match="num_feature=4"):
        merge_tensor_list(tf.constant(X2), MergeType.STACK, num_feature=4)


def test_merge_dynamic_batch_in_tf_function():
    @tf.function(input_signature=[tf.TensorSpec([None, 3, 5], tf.float32)])
    def concat(x):
        return merge_tensor_list(x, MergeType.CONCAT)

    assert concat(tf.constant(X3)).shape == (4, 15)


def test_merge_lists():
    parts = [tf.constant(X2), tf.constant(X2 * 2)]
    np.testing.assert_array_equal(merge_tensor_list(parts, MergeType.CONCAT).numpy(), np.hstack([X2, X2 * 2]))
    np.testing.assert_array_equal(merge_tensor_list(parts, MergeType.STACK).numpy(), np.stack([X2, X2 * 2], 1))
    assert merge_tensor_list(parts, MergeType.STACK, keep_list=True)[0].shape == (4, 2, 6)
    same = merge_tensor_list(parts, MergeType.NONE)
    assert len(same) == 2 and same[1] is parts[1]


def test_merge_errors():
    with pytest.raises(ValueError, match="shape \\(4,\\)"):
        merge_tensor_list(tf.zeros([4]))
    with pytest.raises(ValueError, match="'sum'"):
        merge_tensor_list(tf.constant(X2), "sum")
    with pytest.raises(ValueError, match="non-empty"):
        merge_tensor_list([])


def _reference_topk(w, k, t):
    """Plain loops: each round is a softmax of the running keys, after damping what was already picked."""
    out = []
    for row in w.astype(np.float64):
        keys, prev, total = list(row), [0.0] * len(row), [0.0] * len(row)
        for _ in range(k):
            keys = [key + np.log(max(1.0 - p, np.finfo(np.float32).tiny)) for key, p in zip(keys, prev)]
            top = max(keys)
            exps = [np.exp((key - top) / t) for key in keys]
            prev = [e / sum(exps) for e in exps]
            total = [a + b for a, b in zip(total, prev)]
        out.append(total)
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_continuous_topk_and_sampling(seed):
    w = np.random.default_rng(seed).normal(size=(3, 8)).astype(np.float32)
    got = continuous_topk(tf.constant(w), 3, 0.5).numpy()
    np.testing.assert_allclose(got, _reference_topk(w, 3, 0.5), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 3.0, rtol=1e-5)
    rounds = continuous_topk(tf.constant(w), 3, 0.5, separate=True)
    assert len(rounds) == 3
    np.testing.assert_allclose(tf.add_n(rounds).numpy(), got, rtol=1e-6)

    keys = gumbel_keys(tf.constant(w), seed=seed).numpy()
    np.testing.assert_array_equal(keys, gumbel_keys(tf.constant(w), seed=seed).numpy())
    assert not np.allclose(keys, w)
    sample = sample_subset(tf.constant(w), 2, seed=seed).numpy()
    np.testing.assert_allclose(sample, _reference_topk(keys, 2, 0.1), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(sample, sample_subset(tf.constant(w), 2, seed=seed).numpy())


def test_gumbel_noise_distribution():
    noise = gumbel_keys(tf.zeros([20000]), seed=3).numpy().astype(np.float64)
    assert noise.mean() == pytest.approx(np.euler_gamma, abs=0.03)
    assert noise.var() == pytest.approx(np.pi**2 / 6, rel=0.05)


def test_topk_argument_errors():
    with pytest.raises(ValueError, match="k must"):
        continuous_topk(tf.zeros([1, 3]), 0, 0.1)
    with pytest.raises(ValueError, match="temperature"):
        continuous_topk(tf.zeros([1, 3]), 1, 0.0)
