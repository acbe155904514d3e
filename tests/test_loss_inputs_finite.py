"""Losses refuse NaN/Inf labels and weights with an error naming the input, in eager and graph mode,
instead of returning a NaN loss that would spread into every parameter it reaches."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from worker.modeling.heads import get_sigmoid_loss_and_pred
from worker.modeling.losses.batch_softmax_loss import batch_softmax_loss
from worker.modeling.losses.inbatch_auc_loss import inbatch_auc_loss

LOGITS = tf.constant([0.3, -1.2, 2.0, 0.1])
GOOD = np.array([1.0, 0.0, 1.0, 0.0], np.float32)


def _bad(position: int, value: float) -> np.ndarray:
    label = GOOD.copy()
    label[position] = value
    return label


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_sigmoid_head_refuses_non_finite_labels_and_weights(value):
    loss, _ = get_sigmoid_loss_and_pred("ctr", LOGITS, GOOD, instance_weight=np.ones(4, np.float32))
    expected = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=GOOD, logits=LOGITS))
    np.testing.assert_allclose(loss.numpy(), expected.numpy(), rtol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="ctr: label must be finite"):
        get_sigmoid_loss_and_pred("ctr", LOGITS, _bad(2, value))
    with pytest.raises(tf.errors.InvalidArgumentError, match="ctr: instance_weight must be finite"):
        get_sigmoid_loss_and_pred("ctr", LOGITS, GOOD, instance_weight=_bad(0, value))


def test_checks_hold_inside_a_traced_function():
    @tf.function
    def step(label):
        return get_sigmoid_loss_and_pred("ctr", LOGITS, label)[0]

    assert np.isfinite(step(tf.constant(GOOD)).numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="ctr: label must be finite"):
        step(tf.constant(_bad(1, np.nan)))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_inbatch_auc_and_batch_softmax_losses_refuse_non_finite_inputs(value):
    with pytest.raises(tf.errors.InvalidArgumentError, match="inbatch_auc_loss: label must be finite"):
        inbatch_auc_loss(_bad(3, value), LOGITS)
    q = tf.constant(np.random.RandomState(0).randn(4, 3), tf.float32)
    assert np.isfinite(batch_softmax_loss(q, q, np.ones(4), GOOD).numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="batch_softmax_loss: weights r must be finite"):
        batch_softmax_loss(q, q, np.ones(4), _bad(0, value))
    with pytest.raises(tf.errors.InvalidArgumentError, match="item_step_interval must be finite"):
        batch_softmax_loss(q, q, _bad(1, value), GOOD)
