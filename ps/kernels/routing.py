"""Id kernels shared by the worker and the PS client: dedupe, split by owning shard, sum per distinct id.

`np.unique` sorts (O(n log n)); a hash pass is O(n), keeps first-occurrence order and runs without the
GIL so several threads can work at once. `unique_inverse` is the one dedupe of a training step: the
worker calls it once per table and batch, and hands the distinct ids on with `dedupe=False`.
"""
from __future__ import annotations

import numba
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(nogil=True, cache=True)
def _unique_inverse(ids):
    """(distinct ids in first-occurrence order, position of each id among them)."""
    n = ids.size
    bits = 4
    while (1 << bits) < 2 * n:
        bits += 1
    mask = (1 << bits) - 1
    slots = np.full(1 << bits, -1, np.int32)  # int32: half the memset of the table per call
    uniq = np.empty(n, np.int64)
    inverse = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        key = ids[i]
        h = np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(64 - bits)) & mask
        while True:
            j = slots[h]
            if j < 0:
                slots[h] = np.int32(m)
                uniq[m] = key
                inverse[i] = m
                m += 1
                break
            if uniq[j] == key:
                inverse[i] = j
                break
            h = (h + 1) & mask
    return uniq[:m], inverse


@numba.njit(nogil=True, cache=True)
def partition_by_owner(ids, num_shards):
    """Stable counting sort by floormod(id, num_shards): order[bounds[s]:bounds[s+1]] are shard s's positions."""
    n = ids.size
    owner = np.empty(n, np.int64)
    counts = np.zeros(num_shards + 1, np.int64)
    for i in range(n):
        o = ids[i] % num_shards  # numba follows Python: floor modulo for signed ints
        owner[i] = o
        counts[o + 1] += 1
    bounds = np.cumsum(counts)
    fill = bounds[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        o = owner[i]
        order[fill[o]] = i
        fill[o] += 1
    return order, bounds


@numba.njit(nogil=True, cache=True)
def _sum_by_inverse(values, inverse, m):
    """out[inverse[i]] += values[i]: per-distinct-id sums of rows."""
    out = np.zeros((m, values.shape[1]), np.float32)
    for i in range(values.shape[0]):
        r = inverse[i]
        for c in range(values.shape[1]):
            out[r, c] += values[i, c]
    return out


def unique_inverse(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct int64 ids in first-occurrence order, int64 position of each input id among them)."""
    return _unique_inverse(ids)


def sum_by_inverse(values: np.ndarray, inverse: np.ndarray, m: int) -> np.ndarray:
    """float32 [m, dim]: row k sums the rows of `values` whose `inverse` is k."""
    return _sum_by_inverse(values, inverse, m)
