"""TensorProto <-> numpy for requests and responses, with input errors reported as INVALID_ARGUMENT."""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.errors import InvalidArgument


def to_numpy(name: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    if proto.dtype == types_pb2.DT_INVALID:
        raise InvalidArgument(f"input {name!r}: tensor has no dtype")
    try:
        return tf.make_ndarray(proto)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"input {name!r}: malformed tensor ({exc})") from None


def to_proto(value) -> tensor_pb2.TensorProto:
    return tf.make_tensor_proto(np.asarray(value) if not isinstance(value, tf.Tensor) else value.numpy())


def dtype_name(enum_value: int) -> str:
    return types_pb2.DataType.Name(enum_value)
