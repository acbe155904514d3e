"""Pairwise in-batch AUC surrogate: log-sigmoid of every (positive, negative) logit margin in the batch."""

from __future__ import annotations

import tensorflow as tf

from worker.modeling.losses.finite_inputs import checked_finite

_NEGATIVE_LABEL_FLOOR = -10000.0
_SATURATE_LOW = -87.0
_SATURATE_HIGH = 88.0


def _pair_terms(label: tf.Tensor, logit: tf.Tensor):
    """Margins d_ij = logit_i - logit_j and the mask of (positive i, negative j) pairs."""
    positive = label > 0
    negative = tf.logical_and(label > _NEGATIVE_LABEL_FLOOR, label <= 0)
    margin = logit[:, None] - logit[None, :]
    return margin, tf.logical_and(positive[:, None], negative[None, :])


def inbatch_auc_loss(label, logit, neg_weight: float = 1.0) -> tf.Tensor:
    """Σ over positive i (label > 0) and negative j (-10000 < label <= 0) of log σ(logit_i − logit_j).

    The sum is a log-likelihood (≤ 0): minimise its negation to raise AUC. Labels ≤ -10000 take no part.
    The gradient is custom: each pair contributes g = 1 − σ(d) to positive i and −neg_weight·g to
    negative j, so `neg_weight` < 1 damps how hard negatives are pushed down (the loss value ignores it).
    Margins saturate like the original kernel: d ≤ −87 counts as d (gradient 1), d ≥ 88 as 0 (gradient 0).
    `label` and `logit` are vectors (or [B, 1]); the loss is a scalar.
    """
    if isinstance(neg_weight, bool) or not isinstance(neg_weight, (int, float)) or not 0.0 < neg_weight <= 1.0:
        raise ValueError(f"neg_weight must be a number in (0, 1], got {neg_weight!r}")
    logit = tf.convert_to_tensor(logit)
    if not logit.dtype.is_floating:
        raise ValueError(f"logit must be a floating tensor, got dtype {logit.dtype.name}")
    label = tf.cast(tf.convert_to_tensor(label), logit.dtype)
    if not label.shape.is_compatible_with(logit.shape):
        raise ValueError(f"label shape {label.shape} does not match logit shape {logit.shape}")
    flat_label = checked_finite(tf.reshape(label, [-1]), "inbatch_auc_loss: label")
    neg_weight = float(neg_weight)

    @tf.custom_gradient
    def _loss(flat_logit):
        margin, pairs = _pair_terms(flat_label, flat_logit)
        zeros = tf.zeros_like(margin)
        log_sigmoid = tf.where(margin >= _SATURATE_HIGH, zeros, -tf.nn.softplus(-margin))
        log_sigmoid = tf.where(margin <= _SATURATE_LOW, margin, log_sigmoid)
        loss = tf.reduce_sum(tf.where(pairs, log_sigmoid, zeros))

        def grad(upstream):
            slope = tf.where(margin <= _SATURATE_LOW, tf.ones_like(margin), tf.sigmoid(-margin))
            slope = tf.where(tf.logical_and(pairs, margin < _SATURATE_HIGH), slope, zeros)
            per_logit = tf.reduce_sum(slope, axis=1) - neg_weight * tf.reduce_sum(slope, axis=0)
            return upstream * per_logit

        return loss, grad

    return _loss(tf.reshape(logit, [-1]))
