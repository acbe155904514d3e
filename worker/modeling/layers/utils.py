"""Shape helpers, tensor-list merging and Gumbel subset sampling shared by layer code."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

_TINY = float(np.finfo(np.float32).tiny)


class MergeType:
    """How a list of per-feature tensors is combined."""

    CONCAT = "concat"
    STACK = "stack"
    NONE = None


class DCNType:
    """Cross-network variants of DCN layers."""

    VECTOR = "vector"
    MATRIX = "matrix"
    MIXED = "mixed"


_MERGE_TYPES = (MergeType.CONCAT, MergeType.STACK, MergeType.NONE)


def check_dim(dim) -> int:
    """A static dimension as an int, -1 when unknown."""
    if dim is None:
        return -1
    if isinstance(dim, tf.compat.v1.Dimension):
        return -1 if dim.value is None else int(dim.value)
    if isinstance(dim, (int, np.integer)) and not isinstance(dim, bool):
        return int(dim)
    raise TypeError(f"dim must be None, an int or a tf.compat.v1.Dimension, got {dim!r} ({type(dim).__name__})")


def dim_size(inputs: tf.Tensor, axis: int):
    """The static size of `axis` when known, else the dynamic one (a scalar tensor)."""
    size = check_dim(inputs.shape[axis])
    return tf.shape(inputs)[axis] if size == -1 else size


def _unwrap(tensor: tf.Tensor, keep_list: bool):
    return [tensor] if keep_list else tensor


def merge_tensor_list(
    tensor_list: tf.Tensor | Sequence[tf.Tensor],
    merge_type: str | None = MergeType.CONCAT,
    num_feature: int | None = None,
    axis: int = 1,
    keep_list: bool = False,
):
    """Merge per-feature embeddings.

    A single tensor is interpreted by rank: `[B, F, E]` is already stacked, `[B, F*E]` with `num_feature=F`
    is already concatenated. A list of several tensors is stacked/concatenated along `axis` or returned as is.
    `keep_list` wraps a single-tensor result in a list.
    """
    if merge_type not in _MERGE_TYPES:
        raise ValueError(f"merge_type must be one of {_MERGE_TYPES}, got {merge_type!r}")
    if isinstance(tensor_list, (tf.Tensor, tf.Variable, np.ndarray)):
        tensor_list = [tensor_list]
    if not isinstance(tensor_list, (list, tuple)) or not tensor_list:
        raise ValueError(f"tensor_list must be a tensor or a non-empty list of tensors, got {tensor_list!r}")
    tensor_list = [tf.convert_to_tensor(t) for t in tensor_list]

    if len(tensor_list) > 1:
        if merge_type == MergeType.STACK:
            return _unwrap(tf.stack(tensor_list, axis=axis), keep_list)
        if merge_type == MergeType.CONCAT:
            return _unwrap(tf.concat(tensor_list, axis=axis), keep_list)
        return list(tensor_list)

    tensor = tensor_list[0]
    if tensor.shape.rank == 3:
        return _merge_stacked(tensor, merge_type, axis, keep_list)
    if tensor.shape.rank == 2:
        return _merge_concatenated(tensor, merge_type, num_feature, axis, keep_list)
    raise ValueError(f"merge_tensor_list expects a rank-2 or rank-3 tensor, got shape {tensor.shape}")


def _merge_stacked(tensor: tf.Tensor, merge_type: str | None, axis: int, keep_list: bool):
    """One `[B, F, E]` tensor."""
    if merge_type == MergeType.STACK:
        return _unwrap(tensor, keep_list)
    if merge_type == MergeType.CONCAT:
        flat = dim_size(tensor, 1) * dim_size(tensor, 2)
        return _unwrap(tf.reshape(tensor, [dim_size(tensor, 0), flat]), keep_list)
    return tf.unstack(tensor, axis=axis)


def _merge_concatenated(tensor: tf.Tensor, merge_type: str | None, num_feature: int | None, axis: int,
                        keep_list: bool):
    """One `[B, F*E]` tensor (F = `num_feature`)."""
    if num_feature is None or num_feature <= 1:
        return _unwrap(tensor, keep_list)
    emb_size = check_dim(tensor.shape[1])
    if emb_size != -1 and emb_size % num_feature:
        raise ValueError(f"last dim {emb_size} of {tensor.shape} is not divisible by num_feature={num_feature}")
    if merge_type == MergeType.CONCAT:
        return _unwrap(tensor, keep_list)
    stacked = tf.reshape(tensor, [dim_size(tensor, 0), num_feature, dim_size(tensor, 1) // num_feature])
    if merge_type == MergeType.STACK:
        return _unwrap(stacked, keep_list)
    return tf.unstack(stacked, axis=axis)


def gumbel_keys(w: tf.Tensor, seed: int | None = None) -> tf.Tensor:
    """`w` plus i.i.d. Gumbel(0, 1) noise; with `seed` the noise is the same on every call."""
    w = tf.convert_to_tensor(w)
    shape = tf.shape(w)
    if seed is None:
        uniform = tf.random.uniform(shape, minval=_TINY, maxval=1.0, dtype=w.dtype)
    else:
        uniform = tf.random.stateless_uniform(shape, seed=[seed, 0], minval=_TINY, maxval=1.0, dtype=w.dtype)
    return w - tf.math.log(-tf.math.log(uniform))


def continuous_topk(w: tf.Tensor, k: int, t: float, separate: bool = False):
    """Relaxed k-hot mask of the top-k entries along the last axis (k successive softmaxes at temperature t).

    Each round suppresses what earlier rounds selected; returns the k soft one-hot rounds if `separate`,
    else their sum.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if t <= 0:
        raise ValueError(f"t (temperature) must be > 0, got {t}")
    w = tf.convert_to_tensor(w)
    onehot = tf.zeros_like(w)
    rounds = []
    for _ in range(k):
        w = w + tf.math.log(tf.maximum(1.0 - onehot, _TINY))
        onehot = tf.nn.softmax(w / t, axis=-1)
        rounds.append(onehot)
    return rounds if separate else tf.add_n(rounds)


def sample_subset(w: tf.Tensor, k: int, t: float = 0.1, seed: int | None = None) -> tf.Tensor:
    """Differentiable sample of a size-k subset, weighted by logits `w` (Gumbel top-k relaxation)."""
    return continuous_topk(gumbel_keys(w, seed=seed), k, t)
