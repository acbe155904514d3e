import math

import numpy as np
import pytest
import tensorflow as tf

from worker.modeling.losses import batch_softmax_loss


def _reference(query, item, interval, r, normalize=True, temperature=1.0):
    """Loops over rows and columns in float64, with an explicit max-shift before exponentiating."""
    q, v = [list(map(float, row)) for row in query], [list(map(float, row)) for row in item]
    if normalize:
        q = [[x / math.sqrt(sum(y * y for y in row)) for x in row] for row in q]
        v = [[x / math.sqrt(sum(y * y for y in row)) for x in row] for row in v]
    total = 0.0
    for i in range(len(q)):
        row = [
            sum(a * b for a, b in zip(q[i], v[j])) / temperature + math.log(max(float(interval[j]), 1.0))
            for j in range(len(v))
        ]
        top = max(row)
        log_denominator = top + math.log(sum(math.exp(x - top) for x in row))
        total -= float(r[i]) * (row[i] - log_denominator)
    return total


def _case(seed, batch=6, dim=4):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(batch, dim)),
        rng.normal(size=(batch, dim)),
        rng.integers(0, 10, size=batch).astype(np.float64),  # 0 exercises the clamp to 1
        rng.uniform(0.0, 2.0, size=batch),
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("normalize, temperature", [(True, 1.0), (True, 0.2), (False, 1.0), (False, 3.0)])
def test_matches_loops(seed, normalize, temperature):
    query, item, interval, r = _case(seed)
    expected = _reference(query, item, interval, r, normalize, temperature)
    got = batch_softmax_loss(
        tf.constant(query, tf.float32), tf.constant(item, tf.float32), interval, r, normalize, temperature
    )
    assert float(got) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_seeded_fixture_value():
    """The original asserts 6.5931373 on unseeded inputs (not reproducible); this pins a seeded fixture."""
    rng = np.random.RandomState(0)
    query, item = rng.rand(4, 3).astype(np.float32), rng.rand(4, 3).astype(np.float32)
    interval = rng.randint(1, 10, size=(4,)).astype(np.float32)
    r = np.ones((4,), np.float32)
    expected = _reference(query, item, interval, r)
    assert float(batch_softmax_loss(query, item, interval, r)) == pytest.approx(expected, rel=1e-6)


def test_large_similarities_do_not_overflow():
    query, item, interval, r = _case(9)
    query, item = query * 300.0, item * 300.0
    expected = _reference(query, item, interval, r, normalize=False, temperature=0.5)
    got = float(batch_softmax_loss(query.astype(np.float32), item.astype(np.float32), interval, r, False, 0.5))
    assert math.isfinite(got)
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_gradient_matches_numeric(normalize):
    query, item, interval, r = _case(4, batch=5, dim=3)
    interval_t, r_t = tf.constant(interval), tf.constant(r)
    theoretical, numerical = tf.test.compute_gradient(
        lambda q, v: batch_softmax_loss(q, v, interval_t, r_t, normalize, 0.7),
        [tf.constant(query), tf.constant(item)],
    )
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=1e-5, atol=1e-6)


def test_dynamic_batch_in_tf_function():
    query, item, interval, r = _case(6)
    expected = _reference(query, item, interval, r)
    spec = tf.TensorSpec([None, None], tf.float32)

    @tf.function(input_signature=[spec, spec, tf.TensorSpec([None], tf.float32), tf.TensorSpec([None, 1], tf.float32)])
    def loss(q, v, interval, r):
        return batch_softmax_loss(q, v, interval, r)

    got = loss(*(tf.constant(x, tf.float32) for x in (query, item, interval, r[:, None])))
    assert float(got) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_must_be_positive(temperature):
    with pytest.raises(ValueError, match="temperature should be positive"):
        batch_softmax_loss(tf.ones([2, 2]), tf.ones([2, 2]), [1.0, 1.0], [1.0, 1.0], temperature=temperature)


def test_shape_errors():
    with pytest.raises(ValueError, match="does not match"):
        batch_softmax_loss(tf.ones([2, 2]), tf.ones([3, 2]), [1.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="item_step_interval"):
        batch_softmax_loss(tf.ones([2, 2]), tf.ones([2, 2]), [1.0, 1.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="r must"):
        batch_softmax_loss(tf.ones([2, 2]), tf.ones([2, 2]), [1.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="\\[batch, dim\\]"):
        batch_softmax_loss(tf.ones([2]), tf.ones([2]), [1.0, 1.0], [1.0, 1.0])
