import math

import numpy as np
import pytest
import tensorflow as tf

from worker.modeling.losses import inbatch_auc_loss


def _reference(labels, logits, neg_weight=1.0):
    """Plain loops over (positive, negative) pairs, with the original kernel's saturation rules."""
    loss, grad = 0.0, [0.0] * len(logits)
    for i, (li, si) in enumerate(zip(labels, logits)):
        if not li > 0:
            continue
        for j, (lj, sj) in enumerate(zip(labels, logits)):
            if not -10000 < lj <= 0:
                continue
            d = float(si) - float(sj)
            if d <= -87:
                loss, g = loss + d, 1.0
            elif d >= 88:
                g = 0.0
            else:
                loss += math.log(1.0 / (1.0 + math.exp(-d)))
                g = 1.0 - 1.0 / (1.0 + math.exp(-d))
            grad[i] += g
            grad[j] -= neg_weight * g
    return loss, np.array(grad)


def _loss_and_grad(labels, logits, neg_weight=1.0, upstream=1.0, dtype=tf.float32):
    logit = tf.constant(logits, dtype)
    with tf.GradientTape() as tape:
        tape.watch(logit)
        loss = inbatch_auc_loss(tf.constant(labels, dtype), logit, neg_weight=neg_weight)
    return loss.numpy(), tape.gradient(loss, logit, output_gradients=tf.constant(upstream, dtype)).numpy()


def test_original_values():
    loss, grad = _loss_and_grad([1.0, 0, 0, 1], [0.5, -0.2, -0.4, 0.8], upstream=2.0)
    assert loss == pytest.approx(-1.3208841, abs=1e-6)
    np.testing.assert_allclose(grad, [1.2417255, -1.2015073, -1.0410514, 1.0008333], atol=1e-6)


def _random_case(seed, size=24):
    rng = np.random.default_rng(seed)
    labels = rng.choice([1.0, 2.0, 0.0, -1.0, -10000.0, -20000.0], size=size)
    logits = rng.normal(scale=2.0, size=size)
    return labels, logits


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("neg_weight", [1.0, 0.3])
def test_matches_pair_loops(seed, neg_weight):
    labels, logits = _random_case(seed)
    expected_loss, expected_grad = _reference(labels, logits, neg_weight)
    loss, grad = _loss_and_grad(labels, logits, neg_weight, upstream=1.5, dtype=tf.float64)
    assert loss == pytest.approx(expected_loss, rel=1e-5, abs=1e-5)
    np.testing.assert_allclose(grad, 1.5 * expected_grad, rtol=1e-5, atol=1e-5)
    loss32, grad32 = _loss_and_grad(labels, logits, neg_weight, upstream=1.5)
    assert loss32 == pytest.approx(expected_loss, rel=1e-5, abs=1e-5)
    np.testing.assert_allclose(grad32, 1.5 * expected_grad, rtol=1e-5, atol=1e-5)


def test_saturated_margins():
    labels, logits = [1.0, 0.0, 1.0, 0.0], [-50.0, 50.0, 100.0, -1.0]
    expected_loss, expected_grad = _reference(labels, logits)
    loss, grad = _loss_and_grad(labels, logits)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    assert expected_loss < -100
    np.testing.assert_allclose(grad, expected_grad, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_matches_numeric(seed):
    labels, logits = _random_case(seed, size=10)
    label = tf.constant(labels, tf.float64)
    theoretical, numerical = tf.test.compute_gradient(
        lambda x: inbatch_auc_loss(label, x), [tf.constant(logits, tf.float64)]
    )
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-5, atol=1e-6)


def test_column_shape_and_dynamic_batch():
    labels, logits = _random_case(5)
    expected_loss, expected_grad = _reference(labels, logits)
    spec = tf.TensorSpec([None, 1], tf.float32)

    @tf.function(input_signature=[spec, spec])
    def step(label, logit):
        with tf.GradientTape() as tape:
            tape.watch(logit)
            loss = inbatch_auc_loss(label, logit)
        return loss, tape.gradient(loss, logit)

    loss, grad = step(tf.constant(labels[:, None], tf.float32), tf.constant(logits[:, None], tf.float32))
    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)
    assert grad.shape == (len(logits), 1)
    np.testing.assert_allclose(grad.numpy()[:, 0], expected_grad, rtol=1e-5, atol=1e-5)


def test_no_pairs_gives_zero():
    loss, grad = _loss_and_grad([1.0, 2.0], [0.3, 0.1])
    assert loss == 0.0 and not grad.any()


@pytest.mark.parametrize("neg_weight", [0.0, 1.5, -1.0, True, "1"])
def test_bad_neg_weight(neg_weight):
    with pytest.raises(ValueError, match="neg_weight"):
        inbatch_auc_loss([1.0, 0.0], [0.1, 0.2], neg_weight=neg_weight)


def test_bad_shapes_and_dtype():
    with pytest.raises(ValueError, match="label shape"):
        inbatch_auc_loss(tf.zeros([3]), tf.zeros([4]))
    with pytest.raises(ValueError, match="floating"):
        inbatch_auc_loss(tf.zeros([3]), tf.zeros([3], tf.int32))
