"""Labels and weights of a loss must be finite: one NaN would silently turn the loss, and every parameter
it reaches through the gradients, into NaN. The check runs in the graph, so it holds for every batch."""
from __future__ import annotations

import tensorflow as tf


def checked_finite(value: tf.Tensor, what: str) -> tf.Tensor:
    """`value`, failing with InvalidArgumentError naming `what` when it holds NaN or Inf (a floating tensor)."""
    if not value.dtype.is_floating:
        return value
    return tf.debugging.check_numerics(value, f"{what} must be finite (found NaN or Inf)")
