"""Who owns what: ids by floor modulo (docs/monolith-reference.md), dense variables by a stable hash of the name.

Both the client (routing) and the server (ownership checks, re-sharding on restore) use these, so
they can never disagree.
"""
from __future__ import annotations

import hashlib

import numpy as np


def id_owner(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """floormod(id, n) on int64: negative ids route consistently (numpy's % takes the divisor's sign). For a
    power of two n that is the low bits of the two's-complement id, ten times cheaper than an int64 division."""
    if ids.dtype == np.int64 and num_shards > 0 and num_shards & (num_shards - 1) == 0:
        return np.bitwise_and(ids, np.int64(num_shards - 1))
    return np.mod(ids, np.int64(num_shards))


def dense_owner(name: str, num_shards: int) -> int:
    """md5 of the name: stable across processes and Python versions (unlike `hash`)."""
    digest = hashlib.md5(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % num_shards
