"""Numba kernels for the id → row index (open addressing, linear probing) and per-batch id dedup.

Only the memory-latency-bound loops (probe, gather, optimizer steps) use the thread pool: every parallel region costs a
team wake-up and a barrier, which on a busy machine can cost more than the loop itself.

The index is one int64 array [capacity, 2] of (id, row) pairs (row -1 = empty; ids may take any value),
power-of-two capacity, kept at most half full; key and row share a cache line, so a probe costs one
miss. Rows live in separate dense arrays; the index only maps ids to row numbers, so growing the index
never moves row data.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

_SERIAL = dict(nogil=True, cache=True, error_model="numpy")
_PARALLEL = dict(_SERIAL, parallel=True)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


@njit(nogil=True, cache=True, inline="always")
def mix64(k):
    """MurmurHash3's 64-bit finalizer: spreads sequential or slot-prefixed ids over all bits."""
    x = np.uint64(k)
    x ^= x >> _S33
    x *= _M1
    x ^= x >> _S33
    x *= _M2
    x ^= x >> _S33
    return x


_AHEAD = 16
"""Probe loops prefetch the index slot of the key this many iterations ahead."""


@intrinsic
def prefetch(typingctx, arr, row):
    """Hint the CPU to load arr[row, 0] into cache (LLVM's prefetch: read, high locality)."""
    sig = types.void(arr, row)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        zeros = [context.get_constant(types.intp, 0)] * (aryty.ndim - 1)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]] + zeros, wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(nogil=True, cache=True, inline="always")
def _prefetch_slot(index, ids, i):
    if i + _AHEAD < ids.shape[0]:
        prefetch(index, np.int64(mix64(ids[i + _AHEAD]) & np.uint64(index.shape[0] - 1)))


@njit(nogil=True, cache=True, inline="always")
def _find(index, key):
    mask = np.uint64(index.shape[0] - 1)
    h = mix64(key) & mask
    while True:
        s = index[h, 1]
        if s < 0:
            return -1
        if index[h, 0] == key:
            return s
        h = (h + np.uint64(1)) & mask


@njit(**_PARALLEL)
def probe(index, ids, rows):
    """rows[i] = row of ids[i], or -1 when absent."""
    for i in prange(ids.shape[0]):
        _prefetch_slot(index, ids, i)
        rows[i] = _find(index, ids[i])


@njit(**_PARALLEL)
def probe_and_prefetch(index, ids, rows, values, state):
    """probe(), also prefetching each found row of `values` and `state` for the gather/update that follows."""
    for i in prange(ids.shape[0]):
        _prefetch_slot(index, ids, i)
        r = _find(index, ids[i])
        rows[i] = r
        if r >= 0:
            prefetch(values, r)
            prefetch(state, r)


@njit(**_SERIAL)
def insert(index, ids, first_row):
    """Insert absent, distinct `ids` as rows first_row, first_row+1, … (caller guarantees free space)."""
    mask = np.uint64(index.shape[0] - 1)
    for i in range(ids.shape[0]):
        _prefetch_slot(index, ids, i)
        key = ids[i]
        h = mix64(key) & mask
        while index[h, 1] >= 0:
            h = (h + np.uint64(1)) & mask
        index[h, 0] = key
        index[h, 1] = first_row + i


@njit(**_SERIAL)
def rebuild(index, row_ids, n):
    """Reset the index to map row_ids[r] → r for r < n."""
    index[:, 1] = -1
    insert(index, row_ids[:n], 0)


@njit(**_PARALLEL)
def gather(values, rows, out):
    """out[i] = values[rows[i]] (zeros where rows[i] < 0)."""
    zero = np.float32(0.0)
    for i in prange(rows.shape[0]):
        r = rows[i]
        for j in range(values.shape[1]):
            out[i, j] = values[r, j] if r >= 0 else zero


@njit(**_SERIAL)
def scatter_rows(values, rows, src, add):
    """values[rows[i]] = src[i] (or += when `add`), skipping rows[i] < 0; rows are distinct."""
    for i in range(rows.shape[0]):
        r = rows[i]
        if r >= 0:
            if add:
                for j in range(src.shape[1]):
                    values[r, j] += src[i, j]
            else:
                for j in range(src.shape[1]):
                    values[r, j] = src[i, j]


@njit(**_SERIAL)
def dedup(ids):
    """Return (unique ids in first-seen order, inverse index per input, occurrences per unique id)."""
    n = ids.shape[0]
    cap = 16
    while cap < 2 * n:
        cap *= 2
    mask = np.uint64(cap - 1)
    tkeys = np.empty(cap, np.int64)
    tvals = np.full(cap, -1, np.int32)
    inv = np.empty(n, np.int32)
    counts = np.zeros(n, np.int32)
    uniq = np.empty(n, np.int64)
    u = 0
    for i in range(n):
        key = ids[i]
        h = mix64(key) & mask
        while True:
            s = tvals[h]
            if s < 0:
                tkeys[h] = key
                tvals[h] = u
                uniq[u] = key
                s = u
                u += 1
                break
            if tkeys[h] == key:
                break
            h = (h + np.uint64(1)) & mask
        inv[i] = s
        counts[s] += 1
    return uniq[:u], inv, counts[:u]


@njit(**_SERIAL)
def combine_by_inverse(src, inv, u, last_wins):
    """out[k] = sum (or last, in input order) of src[i] over i with inv[i] == k."""
    out = np.zeros((u, src.shape[1]), np.float32)
    for i in range(inv.shape[0]):
        k = inv[i]
        if last_wins:
            out[k] = src[i]
        else:
            out[k] += src[i]
    return out


@njit(**_SERIAL)
def stamp(update_time, rows, t):
    """update_time[rows[i]] = t for rows[i] >= 0."""
    for i in range(rows.shape[0]):
        r = rows[i]
        if r >= 0:
            update_time[r] = t


@njit(**_SERIAL)
def all_finite(a):
    flat = a.reshape(-1)
    bad = 0
    for i in range(flat.shape[0]):
        bad += not np.isfinite(flat[i])
    return bad == 0
