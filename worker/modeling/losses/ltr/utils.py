"""Ranking-list helpers: validity masks, sorting by score, shuffling, approximate ranks and ideal DCG.

Lists are `[batch_size, list_size]`; a label < 0 marks a padded/invalid entry.
"""

from __future__ import annotations

import tensorflow as tf

_EPSILON = 1e-10


def label_valid_fn(labels) -> tf.Tensor:
    """True where a label is a real entry (>= 0)."""
    labels = tf.convert_to_tensor(labels)
    return tf.greater_equal(labels, tf.zeros([], labels.dtype))


def _require_rank2(name: str, tensor: tf.Tensor) -> None:
    if tensor.shape.rank is not None and tensor.shape.rank != 2:
        raise ValueError(f"{name} must be [batch_size, list_size], got shape {tensor.shape}")


def sort_by_scores(scores, features_list, topn=None) -> list[tf.Tensor]:
    """Each feature reordered per list by descending score (ties keep list order), cut to `topn` entries."""
    scores = tf.convert_to_tensor(scores)
    _require_rank2("scores", scores)
    batch_size, list_size = tf.unstack(tf.shape(scores))
    topn = list_size if topn is None else tf.minimum(tf.cast(topn, tf.int32), list_size)
    _, indices = tf.math.top_k(scores, topn, sorted=True)
    offsets = tf.expand_dims(tf.range(batch_size) * list_size, 1)
    flat_indices = tf.reshape(indices + offsets, [-1])
    output_shape = tf.stack([batch_size, topn])
    sorted_features = []
    for i, feature in enumerate(features_list):
        feature = tf.convert_to_tensor(feature)
        if not feature.shape.is_compatible_with(scores.shape):
            raise ValueError(f"features_list[{i}] shape {feature.shape} does not match scores shape {scores.shape}")
        sorted_features.append(tf.reshape(tf.gather(tf.reshape(feature, [-1]), flat_indices), output_shape))
    return sorted_features


def organize_valid_indices(is_valid, shuffle: bool = True, seed=None) -> tf.Tensor:
    """`[batch, list, 2]` (batch_id, index) pairs for `tf.gather_nd` that put valid entries first.

    Valid entries come in random order when `shuffle` (op-seeded `seed`), else in their original
    order; invalid entries follow.
    """
    is_valid = tf.convert_to_tensor(is_valid)
    _require_rank2("is_valid", is_valid)
    if is_valid.dtype != tf.bool:
        raise ValueError(f"is_valid must be a bool tensor, got dtype {is_valid.dtype.name}")
    shape = tf.shape(is_valid)
    if shuffle:
        values = tf.random.uniform(shape, seed=seed)
    else:
        values = tf.ones(shape) * tf.reverse(tf.cast(tf.range(shape[1]), tf.float32), axis=[-1])
    keys = tf.where(is_valid, values, tf.fill(shape, -1e-6))
    indices = tf.math.top_k(keys, k=shape[1], sorted=True).indices
    batch_ids = tf.ones_like(indices) * tf.expand_dims(tf.range(shape[0]), 1)
    return tf.stack([batch_ids, indices], axis=2)


def shuffle_valid_indices(is_valid, seed=None) -> tf.Tensor:
    """`organize_valid_indices` with the valid entries shuffled."""
    return organize_valid_indices(is_valid, shuffle=True, seed=seed)


def reshape_first_ndims(tensor, first_ndims: int, new_shape):
    """Reshape the leading `first_ndims` dimensions to `new_shape`, keeping the rest (dense or sparse)."""
    if isinstance(tensor, tf.SparseTensor):
        rank, current_shape = tensor.shape.rank, tensor.dense_shape
    else:
        tensor = tf.convert_to_tensor(tensor)
        rank, current_shape = tensor.shape.rank, tf.shape(tensor, out_type=tf.int64)
    if rank is not None and rank < first_ndims:
        raise ValueError(f"tensor has rank {rank}, fewer than first_ndims={first_ndims}")
    full_shape = tf.concat([tf.cast(new_shape, tf.int64), current_shape[first_ndims:]], 0)
    if isinstance(tensor, tf.SparseTensor):
        return tf.sparse.reshape(tensor, full_shape)
    return tf.reshape(tensor, full_shape)


def approx_ranks(logits, alpha: float = 10.0) -> tf.Tensor:
    """Smooth ranks: rank_i = 1/2 + Σ_j σ(alpha · (s_j − s_i)), so the top item gets ≈ 1 (O(list²) memory)."""
    logits = tf.convert_to_tensor(logits)
    _require_rank2("logits", logits)
    pairs = tf.sigmoid(alpha * (tf.expand_dims(logits, 1) - tf.expand_dims(logits, 2)))
    return tf.reduce_sum(pairs, axis=-1) + 0.5


def _dcg_gain(labels):
    return tf.pow(2.0, labels) - 1.0


def _log_discount(rank):
    return 1.0 / tf.math.log1p(rank)


def inverse_max_dcg(labels, gain_fn=_dcg_gain, rank_discount_fn=_log_discount, topn=None) -> tf.Tensor:
    """`[batch, 1]` 1 / ideal DCG of each list (the labels sorted descending), 0 where that DCG is 0."""
    labels = tf.convert_to_tensor(labels)
    (ideal,) = sort_by_scores(labels, [labels], topn=topn)
    rank = tf.cast(tf.range(tf.shape(ideal)[1]) + 1, labels.dtype)
    dcg = tf.reduce_sum(gain_fn(ideal) * rank_discount_fn(rank), axis=1, keepdims=True)
    return tf.where(dcg > 0, tf.math.divide_no_nan(tf.ones_like(dcg), dcg), tf.zeros_like(dcg))


def get_batch_idx_size(logits, labels, rank_id, name_prefix: str = "batch_idx"):
    """Regroup a flat batch into padded lists by `rank_id` (examples of one list share an id).

    Example b goes to row = its id's index in order of first appearance and column = its position among
    examples with that id. Returns `(logits_idx, label_idx, mask_idx, unique_idx)`: logits and labels
    (minus 1e-6) scattered into `[num_lists, max_list_size]`, the occupancy mask scattered into
    `[batch_size, batch_size]`, and each list's first example index.
    """
    with tf.name_scope(name_prefix):
        logits = tf.reshape(tf.convert_to_tensor(logits), [-1])
        labels = tf.reshape(tf.cast(labels, logits.dtype), [-1])
        rank_id = tf.reshape(tf.convert_to_tensor(rank_id), [-1])
        for name, tensor in (("labels", labels), ("rank_id", rank_id)):
            if not tensor.shape.is_compatible_with(logits.shape):
                raise ValueError(f"{name} has {tensor.shape[0]} elements but logits has {logits.shape[0]}")
        batch_size = tf.shape(logits)[0]
        unique_ids, row, counts = tf.unique_with_counts(rank_id)
        num_lists = tf.shape(unique_ids)[0]
        membership = tf.one_hot(row, num_lists, dtype=tf.int32)  # [batch, num_lists]
        column = tf.reduce_sum(tf.cumsum(membership, axis=0) * membership, axis=1) - 1
        batch_idx = tf.stack([row, column], axis=1)
        grid = tf.stack([num_lists, tf.reduce_max(counts)])
        logits_idx = tf.scatter_nd(batch_idx, logits, grid)
        label_idx = tf.scatter_nd(batch_idx, labels, grid) - 1e-6
        mask_idx = tf.scatter_nd(batch_idx, tf.ones_like(logits), tf.stack([batch_size, batch_size]))
        unique_idx = tf.argmax(tf.transpose(membership), axis=1)
        return logits_idx, label_idx, mask_idx, unique_idx
