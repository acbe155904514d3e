"""Ranking losses over `[batch_size, list_size]` labels and logits (labels < 0 mark invalid entries).

Follows the early TF-Ranking copy in the original: pairwise losses without a lambda weight weigh each
pair by |l_i − l_j|, any lambda weight scales pairwise losses by list_size (when `lambda_scale`), softmax
and approx-NDCG drop lists whose labels sum to 0, approx-NDCG defaults to per-list weight 1.
"""

from __future__ import annotations

import math

import tensorflow as tf

from worker.modeling.losses.ltr.lambda_weights import DCGLambdaWeight, ListMLELambdaWeight
from worker.modeling.losses.ltr.utils import (
    _EPSILON,
    _dcg_gain,
    _log_discount,
    approx_ranks,
    inverse_max_dcg,
    label_valid_fn,
    shuffle_valid_indices,
    sort_by_scores,
)
from worker.modeling.losses.reduction import Reduction, compute_weighted_loss

_LOG_EPSILON = math.log(_EPSILON)
_DEFAULT_REDUCTION = Reduction.SUM_BY_NONZERO_WEIGHTS


def _prepare(labels, logits):
    logits = tf.convert_to_tensor(logits)
    if logits.shape.rank is not None and logits.shape.rank != 2:
        raise ValueError(f"logits must be [batch_size, list_size], got shape {logits.shape}")
    labels = tf.cast(tf.convert_to_tensor(labels), logits.dtype)
    if not labels.shape.is_compatible_with(logits.shape):
        raise ValueError(f"labels shape {labels.shape} does not match logits shape {logits.shape}")
    return labels, logits


def _item_weights(weights, labels):
    """Weights broadcast to `[batch, list]`: scalar, `[batch]`/`[batch, 1]` per list, or `[batch, list]`."""
    if weights is None:
        return tf.ones_like(labels)
    weights = tf.cast(tf.convert_to_tensor(weights), labels.dtype)
    if weights.shape.rank == 1:
        weights = tf.expand_dims(weights, 1)
    elif weights.shape.rank is not None and weights.shape.rank not in (0, 2):
        raise ValueError(f"weights must be a scalar, [batch], [batch, 1] or [batch, list_size]; got {weights.shape}")
    return tf.ones_like(labels) * weights


def _list_weights(weights, labels):
    """Per-list weights `[batch]` from a scalar, `[batch]` or `[batch, 1]` (None → 1)."""
    batch = tf.shape(labels)[:1]
    if weights is None:
        return tf.ones(batch, labels.dtype)
    weights = tf.cast(tf.convert_to_tensor(weights), labels.dtype)
    rank = weights.shape.rank
    per_item = rank == 2 and weights.shape[1] not in (None, 1)
    if per_item or (rank is not None and rank > 2):
        raise ValueError(f"this loss takes one weight per list (scalar, [batch] or [batch, 1]); got {weights.shape}")
    if rank == 0:
        return tf.broadcast_to(weights, batch)
    return tf.reshape(weights, batch)


def _sort_and_normalize(labels, logits, weights=None):
    """Labels, logits and item weights sorted by logit, invalid entries (label < 0) moved to the end."""
    labels, logits = _prepare(labels, logits)
    weights = _item_weights(weights, labels)
    sentinel = tf.reduce_min(logits, axis=1, keepdims=True) - 1e-6
    scores = tf.where(label_valid_fn(labels), logits, tf.ones_like(logits) * sentinel)
    return sort_by_scores(scores, [labels, logits, weights])


def _pairwise_comparison(sorted_labels, sorted_logits, sorted_weights, lambda_weight=None):
    """`[batch, list, list]` pair labels 1{l_i > l_j}, logit margins s_i − s_j, and pair weights (no gradient).

    A pair weighs w_i times the lambda weight's pair weight, or |l_i − l_j| without one; pairs with an
    invalid side or l_i <= l_j weigh 0.
    """
    label_diff = tf.expand_dims(sorted_labels, 2) - tf.expand_dims(sorted_labels, 1)
    logit_diff = tf.expand_dims(sorted_logits, 2) - tf.expand_dims(sorted_logits, 1)
    pairwise_labels = tf.cast(label_diff > 0, sorted_logits.dtype)
    is_valid = label_valid_fn(sorted_labels)
    valid_pairs = tf.logical_and(tf.expand_dims(is_valid, 2), tf.expand_dims(is_valid, 1))
    pair_weights = pairwise_labels * tf.cast(valid_pairs, sorted_logits.dtype)
    pair_weights *= tf.expand_dims(sorted_weights, 2)
    if lambda_weight is not None:
        lambda_pairs = tf.convert_to_tensor(lambda_weight.pair_weights(sorted_labels), pair_weights.dtype)
        if lambda_pairs.shape.rank not in (None, 0, 3):
            raise ValueError(
                f"{type(lambda_weight).__name__}.pair_weights gave shape {lambda_pairs.shape}, not pair weights "
                "[batch, list, list]; it cannot be used with a pairwise loss"
            )
        pair_weights *= lambda_pairs
    else:
        pair_weights *= tf.abs(label_diff)
    return pairwise_labels, logit_diff, tf.stop_gradient(pair_weights)


def _pairwise_loss(
    loss_fn,
    labels,
    logits,
    weights=None,
    lambda_weight=None,
    lambda_scale=True,
    reduction=_DEFAULT_REDUCTION,
    name=None,
):
    with tf.name_scope(name or "pairwise_loss"):
        sorted_labels, sorted_logits, sorted_weights = _sort_and_normalize(labels, logits, weights)
        _, margins, pair_weights = _pairwise_comparison(sorted_labels, sorted_logits, sorted_weights, lambda_weight)
        if lambda_weight is not None and lambda_scale:
            # Lambda weights shrink the loss by roughly 1/list_size; scale back to the plain pairwise magnitude.
            pair_weights *= tf.cast(tf.shape(sorted_labels)[1], pair_weights.dtype)
        return compute_weighted_loss(loss_fn(margins), weights=pair_weights, reduction=reduction)


def _pairwise_hinge_loss(
    labels, logits, weights=None, lambda_weight=None, lambda_scale=True, reduction=_DEFAULT_REDUCTION, name=None
):
    """Σ over pairs with l_i > l_j of max(0, 1 − (s_i − s_j)), weighted."""
    loss_fn = lambda m: tf.nn.relu(1.0 - m)
    name = name or "pairwise_hinge_loss"
    return _pairwise_loss(loss_fn, labels, logits, weights, lambda_weight, lambda_scale, reduction, name)


def _pairwise_logistic_loss(
    labels, logits, weights=None, lambda_weight=None, lambda_scale=True, reduction=_DEFAULT_REDUCTION, name=None
):
    """Σ over pairs with l_i > l_j of log(1 + exp(−(s_i − s_j))), weighted."""
    loss_fn = lambda m: tf.nn.relu(-m) + tf.math.log1p(tf.exp(-tf.abs(m)))
    name = name or "pairwise_logistic_loss"
    return _pairwise_loss(loss_fn, labels, logits, weights, lambda_weight, lambda_scale, reduction, name)


def _pairwise_soft_zero_one_loss(
    labels, logits, weights=None, lambda_weight=None, lambda_scale=True, reduction=_DEFAULT_REDUCTION, name=None
):
    """Σ over pairs with l_i > l_j of σ(−(s_i − s_j)), a smooth 0-1 loss, weighted."""
    loss_fn = lambda m: tf.where(m > 0, 1.0 - tf.sigmoid(m), tf.sigmoid(-m))
    name = name or "pairwise_soft_zero_one_loss"
    return _pairwise_loss(loss_fn, labels, logits, weights, lambda_weight, lambda_scale, reduction, name)


def _softmax_loss(labels, logits, weights=None, lambda_weight=None, reduction=_DEFAULT_REDUCTION, name=None):
    """Cross-entropy between the normalised (weighted) labels and softmax(logits), per list.

    Invalid entries get label 0 and logit log(1e-10); a `DCGLambdaWeight` replaces labels by its
    individual weights; each list weighs its label sum, and lists with label sum <= 0 are dropped.
    """
    with tf.name_scope(name or "softmax_loss"):
        sorted_labels, sorted_logits, sorted_weights = _sort_and_normalize(labels, logits, weights)
        is_valid = label_valid_fn(sorted_labels)
        sorted_labels = tf.where(is_valid, sorted_labels, tf.zeros_like(sorted_labels))
        sorted_logits = tf.where(is_valid, sorted_logits, tf.ones_like(sorted_logits) * _LOG_EPSILON)
        if isinstance(lambda_weight, DCGLambdaWeight):
            sorted_labels = lambda_weight.individual_weights(sorted_labels)
        sorted_labels *= sorted_weights
        label_sum = tf.reduce_sum(sorted_labels, axis=1)
        keep = label_sum > 0
        label_sum = tf.boolean_mask(label_sum, keep)
        sorted_labels = tf.boolean_mask(sorted_labels, keep)
        sorted_logits = tf.boolean_mask(sorted_logits, keep)
        targets = tf.stop_gradient(sorted_labels / tf.expand_dims(label_sum, 1))
        losses = tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=sorted_logits)
        return compute_weighted_loss(losses, weights=label_sum, reduction=reduction)


def _valid_entries(labels, logits, weights):
    """Flattened labels, logits and weights of the valid entries only."""
    labels, logits = _prepare(labels, logits)
    weights = _item_weights(weights, labels)
    is_valid = tf.reshape(label_valid_fn(labels), [-1])
    return [tf.boolean_mask(tf.reshape(x, [-1]), is_valid) for x in (labels, logits, weights)]


def _sigmoid_cross_entropy_loss(labels, logits, weights=None, reduction=_DEFAULT_REDUCTION, name=None):
    """Pointwise sigmoid cross-entropy over valid entries (labels are probabilities in [0, 1])."""
    with tf.name_scope(name or "sigmoid_cross_entropy_loss"):
        labels, logits, weights = _valid_entries(labels, logits, weights)
        losses = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
        return compute_weighted_loss(losses, weights=weights, reduction=reduction)


def _mean_squared_loss(labels, logits, weights=None, reduction=_DEFAULT_REDUCTION, name=None):
    """Pointwise squared error between logits and labels over valid entries."""
    with tf.name_scope(name or "mean_squared_loss"):
        labels, logits, weights = _valid_entries(labels, logits, weights)
        return compute_weighted_loss(tf.math.squared_difference(logits, labels), weights=weights, reduction=reduction)


def _list_mle_loss(
    labels, logits, weights=None, lambda_weight=None, reduction=_DEFAULT_REDUCTION, name=None, seed=None
):
    """ListMLE: −log Plackett-Luce likelihood of the label order, ties broken by a seeded shuffle.

    Invalid entries get label 0 and logit log(1e-10) and are placed after every valid one. With a
    `ListMLELambdaWeight` the term at each rank is multiplied by its rank discount. One weight per list.
    """
    with tf.name_scope(name or "list_mle_loss"):
        labels, logits = _prepare(labels, logits)
        is_valid = label_valid_fn(labels)
        labels = tf.where(is_valid, labels, tf.zeros_like(labels))
        logits = tf.where(is_valid, logits, tf.ones_like(logits) * _LOG_EPSILON)
        weights = _list_weights(weights, labels)

        shuffled = shuffle_valid_indices(is_valid, seed)
        shuffled_labels = tf.gather_nd(labels, shuffled)
        shuffled_logits = tf.gather_nd(logits, shuffled)
        sorted_labels, sorted_logits = sort_by_scores(shuffled_labels, [shuffled_labels, shuffled_logits])

        sorted_logits -= tf.reduce_max(sorted_logits, axis=1, keepdims=True)
        terms = tf.math.log(tf.math.cumsum(tf.exp(sorted_logits), axis=1, reverse=True)) - sorted_logits
        if isinstance(lambda_weight, ListMLELambdaWeight):
            terms *= lambda_weight.individual_weights(sorted_labels)
        return compute_weighted_loss(tf.reduce_sum(terms, axis=1), weights=weights, reduction=reduction)


def _approx_ndcg_loss(labels, logits, weights=None, reduction=Reduction.SUM, name=None, alpha=10.0):
    """−NDCG with ranks replaced by `approx_ranks` (differentiable), per list.

    Invalid entries get label 0 and a logit 1000 below the list minimum; lists with label sum <= 0
    are dropped. One weight per list, default 1 (the original's docstring says label sum; its code uses 1).
    """
    with tf.name_scope(name or "approx_ndcg_loss"):
        labels, logits = _prepare(labels, logits)
        is_valid = label_valid_fn(labels)
        labels = tf.where(is_valid, labels, tf.zeros_like(labels))
        sentinel = tf.reduce_min(logits, axis=-1, keepdims=True) - 1e3
        logits = tf.where(is_valid, logits, tf.ones_like(logits) * sentinel)
        weights = _list_weights(weights, labels)

        keep = tf.reduce_sum(labels, axis=1) > 0
        labels, logits, weights = (tf.boolean_mask(x, keep) for x in (labels, logits, weights))
        gains = _dcg_gain(labels)
        discounts = _log_discount(approx_ranks(logits, alpha=alpha))
        dcg = tf.reduce_sum(gains * discounts, axis=-1)
        cost = -dcg * tf.reshape(inverse_max_dcg(labels), [-1])
        return compute_weighted_loss(cost, weights=weights, reduction=reduction)
