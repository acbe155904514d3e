"""Lambda weights: per-pair and per-item weights that make ranking losses target a ranking metric.

All methods take labels already sorted by the current scores, `[batch_size, list_size]`.
"""

from __future__ import annotations

import abc

import tensorflow as tf

from worker.modeling.losses.ltr.utils import _dcg_gain, _log_discount, inverse_max_dcg, label_valid_fn


def _ranks(sorted_labels: tf.Tensor) -> tf.Tensor:
    """1-based int32 positions of a sorted list."""
    return tf.range(tf.shape(sorted_labels)[1]) + 1


class _LambdaWeight(abc.ABC):
    """Interface: `pair_weights` for pairwise losses, `individual_weights` for listwise ones."""

    @staticmethod
    def _get_valid_pairs_and_clean_labels(sorted_labels):
        """`[batch, list, list]` mask of pairs of valid entries, and the labels with invalid ones set to 0."""
        sorted_labels = tf.convert_to_tensor(sorted_labels)
        if sorted_labels.shape.rank is not None and sorted_labels.shape.rank != 2:
            raise ValueError(f"sorted_labels must be [batch_size, list_size], got shape {sorted_labels.shape}")
        is_valid = label_valid_fn(sorted_labels)
        valid_pairs = tf.logical_and(tf.expand_dims(is_valid, 2), tf.expand_dims(is_valid, 1))
        return valid_pairs, tf.where(is_valid, sorted_labels, tf.zeros_like(sorted_labels))

    @abc.abstractmethod
    def pair_weights(self, sorted_labels):
        """Weight of each pair (i, j), broadcastable to `[batch, list, list]`."""

    def individual_weights(self, sorted_labels):
        """Weight of each item, `[batch, list]`; by default the labels themselves."""
        return tf.convert_to_tensor(sorted_labels)


class IdentityLambdaWeight(_LambdaWeight):
    """Every pair weighs 1 (plain pairwise loss, but with the lambda-weight list-size scaling)."""

    def pair_weights(self, sorted_labels):
        return 1.0


class DCGLambdaWeight(_LambdaWeight):
    """LambdaLoss / LambdaMART weights for a DCG-like metric.

    A pair weighs |gain_i − gain_j| (gains optionally divided by the ideal DCG) times a rank discount
    that blends the LambdaLoss relative-rank-difference term (weight 1 − smooth_fraction) with the
    LambdaMART absolute-rank term (weight smooth_fraction). With `topn`, only pairs touching the top n count.
    """

    def __init__(
        self,
        topn: int | None = None,
        gain_fn=lambda labels: labels,
        rank_discount_fn=lambda rank: 1.0 / rank,
        normalized: bool = False,
        smooth_fraction: float = 0.0,
    ):
        if topn is not None and (isinstance(topn, bool) or not isinstance(topn, int) or topn < 1):
            raise ValueError(f"topn must be a positive int or None, got {topn!r}")
        if not 0.0 <= smooth_fraction <= 1.0:
            raise ValueError(f"smooth_fraction {smooth_fraction!r} should be in range [0, 1]")
        self._topn = topn
        self._gain_fn = gain_fn
        self._rank_discount_fn = rank_discount_fn
        self._normalized = normalized
        self._smooth_fraction = float(smooth_fraction)

    def _gain(self, clean_labels):
        gain = self._gain_fn(clean_labels)
        if self._normalized:
            gain *= inverse_max_dcg(
                clean_labels, gain_fn=self._gain_fn, rank_discount_fn=self._rank_discount_fn, topn=self._topn
            )
        return gain

    def pair_weights(self, sorted_labels):
        valid_pairs, labels = self._get_valid_pairs_and_clean_labels(sorted_labels)
        gain = self._gain(labels)
        pair_gain = (tf.expand_dims(gain, 2) - tf.expand_dims(gain, 1)) * tf.cast(valid_pairs, gain.dtype)

        rank = _ranks(labels)
        topn = tf.shape(labels)[1] if self._topn is None else self._topn
        # LambdaLoss: discount of the rank difference; ranks past topn are capped at topn + 1.
        capped = tf.where(rank > topn, tf.ones_like(rank) * (topn + 1), rank)
        rank_diff = tf.cast(tf.abs(tf.expand_dims(capped, 1) - tf.expand_dims(capped, 0)), labels.dtype)
        relative = tf.where(
            rank_diff > 0,
            tf.abs(self._rank_discount_fn(rank_diff) - self._rank_discount_fn(rank_diff + 1.0)),
            tf.zeros_like(rank_diff),
        )
        # LambdaMART: difference of the two positions' discounts, 0 past topn.
        float_rank = tf.cast(rank, labels.dtype)
        discount = tf.where(rank > topn, tf.zeros_like(float_rank), self._rank_discount_fn(float_rank))
        absolute = tf.abs(tf.expand_dims(discount, 1) - tf.expand_dims(discount, 0))

        pair_discount = (1.0 - self._smooth_fraction) * relative + self._smooth_fraction * absolute
        pair_weight = tf.abs(pair_gain) * pair_discount
        if self._topn is None:
            return pair_weight
        in_top = rank <= self._topn
        touches_top = tf.logical_or(tf.expand_dims(in_top, 1), tf.expand_dims(in_top, 0))
        return pair_weight * tf.cast(touches_top, pair_weight.dtype)

    def individual_weights(self, sorted_labels):
        sorted_labels = tf.convert_to_tensor(sorted_labels)
        labels = tf.where(label_valid_fn(sorted_labels), sorted_labels, tf.zeros_like(sorted_labels))
        rank = tf.cast(_ranks(labels), labels.dtype)
        return self._gain(labels) * self._rank_discount_fn(rank)


class PrecisionLambdaWeight(_LambdaWeight):
    """Precision@topn weights: a pair counts when exactly one item is positive and exactly one is in the top n."""

    def __init__(self, topn: int, positive_fn=lambda labels: tf.greater_equal(labels, 1.0)):
        if isinstance(topn, bool) or not isinstance(topn, int) or topn < 1:
            raise ValueError(f"topn must be a positive int, got {topn!r}")
        self._topn = topn
        self._positive_fn = positive_fn

    def pair_weights(self, sorted_labels):
        valid_pairs, labels = self._get_valid_pairs_and_clean_labels(sorted_labels)
        binary = tf.cast(self._positive_fn(labels), labels.dtype)
        label_diff = tf.abs(tf.expand_dims(binary, 2) - tf.expand_dims(binary, 1))
        label_diff *= tf.cast(valid_pairs, labels.dtype)
        in_top = _ranks(labels) <= self._topn
        straddles = tf.math.logical_xor(tf.expand_dims(in_top, 1), tf.expand_dims(in_top, 0))
        return label_diff * tf.cast(straddles, labels.dtype)


class ListMLELambdaWeight(_LambdaWeight):
    """Position-aware ListMLE: the likelihood term at rank r is weighted by `rank_discount_fn(r)`."""

    def __init__(self, rank_discount_fn):
        self._rank_discount_fn = rank_discount_fn

    def pair_weights(self, sorted_labels):
        return sorted_labels

    def individual_weights(self, sorted_labels):
        sorted_labels = tf.convert_to_tensor(sorted_labels)
        if sorted_labels.shape.rank is not None and sorted_labels.shape.rank != 2:
            raise ValueError(f"sorted_labels must be [batch_size, list_size], got shape {sorted_labels.shape}")
        rank = tf.cast(_ranks(sorted_labels), sorted_labels.dtype)
        return tf.ones_like(sorted_labels) * self._rank_discount_fn(rank)


def create_ndcg_lambda_weight(topn: int | None = None, smooth_fraction: float = 0.0) -> DCGLambdaWeight:
    """NDCG: gain 2^label − 1, discount 1 / ln(1 + rank), normalised by the ideal DCG."""
    return DCGLambdaWeight(
        topn=topn, gain_fn=_dcg_gain, rank_discount_fn=_log_discount, normalized=True, smooth_fraction=smooth_fraction
    )


def create_reciprocal_rank_lambda_weight(topn: int | None = None, smooth_fraction: float = 0.0) -> DCGLambdaWeight:
    """Reciprocal rank: gain = label, discount 1 / rank, normalised."""
    return DCGLambdaWeight(
        topn=topn,
        gain_fn=lambda labels: labels,
        rank_discount_fn=lambda rank: 1.0 / rank,
        normalized=True,
        smooth_fraction=smooth_fraction,
    )


def create_p_list_mle_lambda_weight(list_size: int) -> ListMLELambdaWeight:
    """Position-aware ListMLE with discount 2^(list_size − rank) − 1."""
    return ListMLELambdaWeight(rank_discount_fn=lambda rank: tf.pow(2.0, tf.cast(list_size, rank.dtype) - rank) - 1.0)
