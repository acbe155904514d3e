"""Serialized `tf.train.Example` records → batches of model features, one record at a time.

A stream cannot stop at a bad record, so each record is decoded and checked on its own against the
feature spec (TensorFlow's own `tf.io.RaggedFeature` / `tf.io.FixedLenFeature` vocabulary): one that
does not parse, has a feature of the wrong kind or length, or a non-finite float raises
`MalformedRecord` saying what is wrong, and the caller skips it. Good records are stacked into a batch:
ragged int64 `[batch, None]` ids for ragged features, dense `[batch, *shape]` arrays for fixed ones.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

_KINDS = {tf.int64: "int64_list", tf.float32: "float_list"}

FeatureSpec = Mapping[str, Any]
"""{name: tf.io.RaggedFeature(tf.int64) | tf.io.FixedLenFeature(shape, tf.float32 | tf.int64, default)}"""


class MalformedRecord(ValueError):
    """A record that is not a valid example for the feature spec (the message says why)."""


def _kind(spec: Any, name: str) -> str:
    if isinstance(spec, tf.io.RaggedFeature):
        if spec.dtype != tf.int64 or spec.partitions or (spec.value_key not in (None, name)):
            raise ValueError(f"feature {name!r}: only plain int64 RaggedFeatures (id lists) are supported, "
                             f"got {spec!r}")
        return "ragged"
    if isinstance(spec, tf.io.FixedLenFeature):
        if spec.dtype not in _KINDS:
            raise ValueError(f"feature {name!r}: FixedLenFeature dtype must be float32 or int64, got {spec.dtype!r}")
        if any(d is None or d < 0 for d in spec.shape):
            raise ValueError(f"feature {name!r}: FixedLenFeature needs a fully defined shape, got {spec.shape!r}")
        return "fixed"
    raise ValueError(f"feature {name!r}: expected tf.io.RaggedFeature or tf.io.FixedLenFeature, got {spec!r}")


class ExampleDecoder:
    """`decode(bytes)` → one example's values (or `MalformedRecord`); `batch(decoded)` → a feature dict."""

    def __init__(self, features: FeatureSpec) -> None:
        if not features:
            raise ValueError("the feature spec is empty: name at least one feature")
        self.features = dict(features)
        self._kinds = {name: _kind(spec, name) for name, spec in self.features.items()}

    def signature(self) -> dict[str, tf.TypeSpec]:
        out: dict[str, tf.TypeSpec] = {}
        for name, spec in self.features.items():
            if self._kinds[name] == "ragged":
                out[name] = tf.RaggedTensorSpec([None, None], tf.int64, ragged_rank=1, row_splits_dtype=tf.int64)
            else:
                out[name] = tf.TensorSpec([None, *spec.shape], spec.dtype)
        return out

    def decode(self, record: bytes) -> dict[str, np.ndarray]:
        try:
            example = tf.train.Example.FromString(record)
        except (DecodeError, RuntimeWarning) as exc:
            raise MalformedRecord(f"not a serialized tf.train.Example ({len(record)} bytes): {exc}") from None
        present = example.features.feature
        out = {}
        for name, spec in self.features.items():
            out[name] = self._values(name, spec, present.get(name))
        return out

    def _values(self, name: str, spec: Any, feature: Any) -> np.ndarray:
        ragged = self._kinds[name] == "ragged"
        dtype = tf.int64 if ragged else spec.dtype
        kind = _KINDS[dtype]
        if feature is None or feature.WhichOneof("kind") is None:
            if ragged:
                return np.zeros(0, np.int64)
            if spec.default_value is None:
                raise MalformedRecord(f"feature {name!r} is missing and has no default")
            return np.broadcast_to(np.asarray(spec.default_value, dtype.as_numpy_dtype), spec.shape).reshape(-1)
        if feature.WhichOneof("kind") != kind:
            raise MalformedRecord(f"feature {name!r} is a {feature.WhichOneof('kind')}, expected a {kind}")
        values = np.asarray(getattr(feature, kind).value, dtype.as_numpy_dtype)
        if not ragged and values.size != int(np.prod(spec.shape, dtype=np.int64)):
            raise MalformedRecord(f"feature {name!r} has {values.size} values, shape {list(spec.shape)} needs "
                                  f"{int(np.prod(spec.shape, dtype=np.int64))}")
        if dtype == tf.float32 and not np.isfinite(values).all():
            raise MalformedRecord(f"feature {name!r} holds NaN or Inf")
        return values

    def batch(self, decoded: list[dict[str, np.ndarray]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, spec in self.features.items():
            parts = [d[name] for d in decoded]
            if self._kinds[name] == "ragged":
                lengths = np.array([p.size for p in parts], np.int64)
                values = np.concatenate(parts) if parts else np.zeros(0, np.int64)
                out[name] = tf.RaggedTensor.from_row_lengths(values, lengths)
            else:
                out[name] = np.stack(parts).reshape([len(parts), *spec.shape])
        return out
