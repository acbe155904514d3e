"""Pooling of a feature's per-id embeddings into one row (or a fixed-length sequence) per example."""
from __future__ import annotations

import tensorflow as tf


class Combiner:
    def combine(self, embeddings: tf.Tensor, row_splits: tf.Tensor, dim: int) -> tf.Tensor:
        raise NotImplementedError


def _row_ids(row_splits: tf.Tensor):
    batch = tf.shape(row_splits, out_type=tf.int64)[0] - 1
    return tf.ragged.row_splits_to_segment_ids(row_splits), batch


class ReduceSum(Combiner):
    def combine(self, embeddings, row_splits, dim):
        ids, batch = _row_ids(row_splits)
        return tf.ensure_shape(tf.math.unsorted_segment_sum(embeddings, ids, batch), [None, dim])

    def __repr__(self) -> str:
        return "ReduceSum()"


class ReduceMean(Combiner):
    """Mean over the row's ids; an empty row pools to zeros (Monolith's C++ kernel gave NaN)."""

    def combine(self, embeddings, row_splits, dim):
        ids, batch = _row_ids(row_splits)
        total = tf.math.unsorted_segment_sum(embeddings, ids, batch)
        counts = tf.cast(row_splits[1:] - row_splits[:-1], embeddings.dtype)[:, None]
        return tf.ensure_shape(tf.math.divide_no_nan(total, counts), [None, dim])

    def __repr__(self) -> str:
        return "ReduceMean()"


class FirstN(Combiner):
    """The first `n` ids of each row as a `[batch, n, dim]` sequence, zero-padded."""

    def __init__(self, n: int) -> None:
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"FirstN needs a positive max_seq_length, got {n!r}")
        self.n = n

    def combine(self, embeddings, row_splits, dim):
        ragged = tf.RaggedTensor.from_row_splits(embeddings, row_splits, validate=False)
        dense = ragged[:, : self.n].to_tensor(default_value=0.0, shape=[None, self.n, dim])
        return tf.ensure_shape(dense, [None, self.n, dim])

    def __repr__(self) -> str:
        return f"FirstN({self.n})"


def from_name(name: str | Combiner | None, max_seq_length: int = 0) -> Combiner:
    if isinstance(name, Combiner):
        return name
    if name is None:
        return FirstN(max_seq_length) if max_seq_length > 0 else ReduceSum()
    if name == "reduce_sum":
        return ReduceSum()
    if name == "reduce_mean":
        return ReduceMean()
    if name == "first_n":
        return FirstN(max_seq_length)
    raise ValueError(f"combiner must be 'reduce_sum', 'reduce_mean' or 'first_n', got {name!r}")
