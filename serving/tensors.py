"""TensorProto <-> numpy for requests and responses; a malformed input tensor is a `PSInvalidArgument`.

Numeric tensors are packed as `tensor_content` (their raw little-endian bytes) without going through
`tf.make_tensor_proto`'s general conversion: responses are packed on every call, and clients read both
forms (`tf.make_ndarray`).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from ps.errors import PSInvalidArgument

_ENUM_OF = {np.dtype(np.float32): types_pb2.DT_FLOAT, np.dtype(np.float64): types_pb2.DT_DOUBLE,
            np.dtype(np.int32): types_pb2.DT_INT32, np.dtype(np.int64): types_pb2.DT_INT64,
            np.dtype(np.float16): types_pb2.DT_HALF, np.dtype(np.uint8): types_pb2.DT_UINT8,
            np.dtype(np.int8): types_pb2.DT_INT8, np.dtype(np.bool_): types_pb2.DT_BOOL}


def to_numpy(name: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    if proto.dtype == types_pb2.DT_INVALID:
        raise PSInvalidArgument(f"input {name!r}: tensor has no dtype")
    if proto.dtype == types_pb2.DT_STRING and not proto.tensor_content:
        shape = [d.size for d in proto.tensor_shape.dim]
        values = np.empty(len(proto.string_val), dtype=object)
        values[:] = proto.string_val
        n = int(np.prod(shape)) if shape else 1
        if values.size == n:
            return values.reshape(shape)
    try:
        return tf.make_ndarray(proto)
    except (ValueError, TypeError) as exc:
        raise PSInvalidArgument(f"input {name!r}: malformed tensor ({exc})") from None


def to_proto(value) -> tensor_pb2.TensorProto:
    arr = np.asarray(value.numpy() if isinstance(value, tf.Tensor) else value)
    enum = _ENUM_OF.get(arr.dtype)
    if enum is None:  # strings and the rarer dtypes
        return tf.make_tensor_proto(arr)
    proto = tensor_pb2.TensorProto(dtype=enum, tensor_content=np.ascontiguousarray(arr).astype(
        arr.dtype.newbyteorder("<"), copy=False).tobytes())
    for size in arr.shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def dtype_name(enum_value: int) -> str:
    return types_pb2.DataType.Name(enum_value)
