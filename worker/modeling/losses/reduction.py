"""Weighted loss reduction with `tf.compat.v1.losses` semantics (same reduction names and values).

Kept here rather than calling `tf.compat.v1.losses` so the ranking losses add nothing to graph
collections and behave identically in eager mode and inside `tf.function`.
"""

from __future__ import annotations

import tensorflow as tf


class Reduction:
    """Reduction names; the values equal `tf.compat.v1.losses.Reduction`'s, so either may be passed."""

    NONE = "none"
    SUM = "weighted_sum"
    SUM_OVER_BATCH_SIZE = "weighted_sum_over_batch_size"
    MEAN = "weighted_mean"
    SUM_BY_NONZERO_WEIGHTS = "weighted_sum_by_nonzero_weights"
    SUM_OVER_NONZERO_WEIGHTS = SUM_BY_NONZERO_WEIGHTS

    @classmethod
    def all(cls) -> tuple[str, ...]:
        return (cls.NONE, cls.SUM, cls.MEAN, cls.SUM_OVER_BATCH_SIZE, cls.SUM_OVER_NONZERO_WEIGHTS)

    @classmethod
    def validate(cls, reduction: str) -> None:
        if reduction not in cls.all():
            raise ValueError(f"Invalid reduction: {reduction!r}; expected one of {cls.all()}")


def compute_weighted_loss(losses, weights=1.0, reduction: str = Reduction.SUM_BY_NONZERO_WEIGHTS) -> tf.Tensor:
    """`losses * weights` (weights broadcast to losses), reduced.

    SUM adds everything; MEAN divides by the sum of the broadcast weights; SUM_OVER_BATCH_SIZE by the
    number of loss elements; SUM_BY_NONZERO_WEIGHTS by the number of elements whose broadcast weight is
    non-zero. A zero denominator gives 0, not NaN.
    """
    Reduction.validate(reduction)
    losses = tf.convert_to_tensor(losses)
    weights = tf.broadcast_to(tf.cast(weights, losses.dtype), tf.shape(losses))
    weighted = losses * weights
    if reduction == Reduction.NONE:
        return weighted
    total = tf.reduce_sum(weighted)
    if reduction == Reduction.SUM:
        return total
    if reduction == Reduction.MEAN:
        denominator = tf.reduce_sum(weights)
    elif reduction == Reduction.SUM_OVER_BATCH_SIZE:
        denominator = tf.cast(tf.size(losses), losses.dtype)
    else:
        denominator = tf.cast(tf.math.count_nonzero(weights), losses.dtype)
    return tf.math.divide_no_nan(total, denominator)
