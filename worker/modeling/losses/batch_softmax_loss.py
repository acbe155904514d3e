"""Sampled-softmax retrieval loss over the in-batch items, corrected for how often each item is sampled."""

from __future__ import annotations

import tensorflow as tf

from worker.modeling.losses.finite_inputs import checked_finite


def batch_softmax_loss(query, item, item_step_interval, r, normalize: bool = True, temperature: float = 1.0):
    """−Σ_i r_i · log softmax_j(q_i·v_j / T + log interval_j)[i] over a batch of (query, item) pairs.

    Every other item in the batch is a negative for query i. An item seen once every `interval` steps
    (interval clamped to ≥ 1) is sampled with frequency 1/interval; adding log(interval) to its logit
    removes the popularity bias of in-batch negatives. `query`/`item` are [B, K] (L2-normalised rows if
    `normalize`), `item_step_interval` and the interest weights `r` have B elements ([B] or [B, 1]).
    Computed as a log-sum-exp, so large similarities do not overflow.
    """
    if not temperature > 0:
        raise ValueError(f"temperature should be positive, while got {temperature}")
    query = tf.convert_to_tensor(query)
    item = tf.convert_to_tensor(item, dtype=query.dtype)
    if query.shape.rank != 2 or item.shape.rank != 2:
        raise ValueError(f"query and item must be [batch, dim], got shapes {query.shape} and {item.shape}")
    if not query.shape.is_compatible_with(item.shape):
        raise ValueError(f"query shape {query.shape} does not match item shape {item.shape}")
    batch = query.shape[0]
    interval = checked_finite(tf.reshape(tf.cast(item_step_interval, query.dtype), [-1]),
                              "batch_softmax_loss: item_step_interval")
    r = checked_finite(tf.reshape(tf.cast(r, query.dtype), [-1]), "batch_softmax_loss: weights r")
    for name, value in (("item_step_interval", interval), ("r", r)):
        if batch is not None and value.shape[0] is not None and value.shape[0] != batch:
            raise ValueError(f"{name} must have batch_size={batch} elements, got {value.shape[0]}")

    if normalize:
        query = tf.math.l2_normalize(query, axis=1)
        item = tf.math.l2_normalize(item, axis=1)
    logits = tf.matmul(query, item, transpose_b=True) / tf.cast(temperature, query.dtype)
    logits += tf.math.log(tf.maximum(interval, 1.0))[None, :]
    log_prob = tf.linalg.diag_part(logits) - tf.reduce_logsumexp(logits, axis=1)
    return -tf.reduce_sum(r * log_prob)
