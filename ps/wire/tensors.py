"""Tensors as packed little-endian bytes: the only way ids and rows cross the wire.

Decoding validates sizes against what the message says (a truncated payload is an error naming
the field and the byte counts, never a silently shorter array).
"""
from __future__ import annotations

import numpy as np

from protos import ps_pb2

IDS = np.dtype("<i8")
F32 = np.dtype("<f4")
F16 = np.dtype("<f2")

DTYPES: dict[int, np.dtype] = {ps_pb2.FLOAT32: F32, ps_pb2.FLOAT16: F16}


def ids_from_bytes(data: bytes | memoryview, where: str) -> np.ndarray:
    if len(data) % IDS.itemsize:
        raise ValueError(f"{where}: ids are {len(data)} bytes, not a multiple of 8 (truncated int64 payload?)")
    return np.frombuffer(data, dtype=IDS)


def rows_from_bytes(data: bytes | memoryview, n: int, dim: int, where: str, dtype: np.dtype = F32) -> np.ndarray:
    expected = n * dim * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{where}: expected {n} ids x dim {dim} = {n * dim} {dtype.name} values ({expected} bytes), "
            f"got {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=dtype).reshape(n, dim)


def to_bytes(array: np.ndarray, dtype: np.dtype) -> bytes:
    return np.ascontiguousarray(array, dtype=dtype).tobytes()
