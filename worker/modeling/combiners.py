"""Pooling of a feature's per-id embeddings into one row (or a fixed-length sequence) per example."""
from __future__ import annotations

import tensorflow as tf


class Combiner:
    def combine(self, embeddings: tf.Tensor, row_splits: tf.Tensor, dim: int) -> tf.Tensor:
        raise NotImplementedError

    def combine_rows(self, rows: tf.Tensor, index: tf.Tensor, row_splits: tf.Tensor, dim: int) -> tf.Tensor:
        """`combine` of `tf.gather(rows, index)` (each id's row of the feature's distinct rows); the pooling
        combiners gather and pool in one op, whose gradient is one op too."""
        return self.combine(tf.gather(rows, index), row_splits, dim)


def _row_ids(row_splits: tf.Tensor):
    """Each id's row: a binary search of the row splits (`tf.ragged.row_splits_to_segment_ids` builds and masks
    a [batch, longest row] matrix, a tenth of a small training step's kernel time)."""
    batch = tf.shape(row_splits, out_type=tf.int64)[0] - 1
    return tf.searchsorted(row_splits[1:], tf.range(row_splits[-1]), side="right"), batch


class ReduceSum(Combiner):
    def combine(self, embeddings, row_splits, dim):
        ids, batch = _row_ids(row_splits)
        return tf.ensure_shape(tf.math.unsorted_segment_sum(embeddings, ids, batch), [None, dim])

    def combine_rows(self, rows, index, row_splits, dim):
        if type(self).combine is not ReduceSum.combine:  # a subclass pools its own way
            return super().combine_rows(rows, index, row_splits, dim)
        ids, batch = _row_ids(row_splits)
        return tf.ensure_shape(tf.sparse.segment_sum(rows, index, ids, num_segments=batch), [None, dim])

    def __repr__(self) -> str:
        return "ReduceSum()"


class ReduceMean(Combiner):
    """Mean over the row's ids; an empty row pools to zeros (Monolith's C++ kernel gave NaN)."""

    def combine(self, embeddings, row_splits, dim):
        ids, batch = _row_ids(row_splits)
        return self._mean(tf.math.unsorted_segment_sum(embeddings, ids, batch), row_splits, dim)

    def combine_rows(self, rows, index, row_splits, dim):
        if type(self).combine is not ReduceMean.combine:  # a subclass pools its own way
            return super().combine_rows(rows, index, row_splits, dim)
        ids, batch = _row_ids(row_splits)
        return self._mean(tf.sparse.segment_sum(rows, index, ids, num_segments=batch), row_splits, dim)

    @staticmethod
    def _mean(total, row_splits, dim):
        counts = tf.cast(row_splits[1:] - row_splits[:-1], total.dtype)[:, None]
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
