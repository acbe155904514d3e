"""Numba kernels for the id → row index (open addressing, linear probing) and per-batch id dedup.

Only the memory-latency-bound loops (probe, gather, optimizer steps) use the thread pool: every parallel region costs a
team wake-up and a barrier, which on a busy machine can cost more than the loop itself.

The index is one uint64 array of slots, power-of-two capacity, kept at most half full. A slot holds a
32-bit fingerprint of the id (high bits of its hash; the low bits pick the home slot) and row + 1 (0 =
empty); ids may take any value. A fingerprint match is confirmed against the row's stored id, so the
table stays collisionless. 8-byte slots halve the index (16 MiB for 1M ids), which keeps more of it in
cache; the confirming read is prefetched. Rows live in separate dense arrays; the index only maps ids to
row numbers, so growing the index never moves row data.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ps.kernels.cache_prefetch import prefetch, prefetch_row, prefetch_rows_ahead, row_ahead

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


_AHEAD = 32
"""Probe loops prefetch the index slot of the key this many iterations ahead."""
_ROW_LEAD = 32
"""Pipelined probes prefetch a candidate row this many ids ahead of verifying (and copying) it."""
_PIPE_CHUNK = 8192
"""Ids per pipeline (one per parallel work item): long enough to amortise its ramp-up."""
_RING = 64
"""Candidate rows in flight per pipeline: a power of two above _ROW_LEAD."""
_LOW32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
MAX_ROWS = (1 << 32) - 1
"""A slot keeps row + 1 in 32 bits."""


@njit(nogil=True, cache=True, inline="always")
def _slot_of(key, mask):
    """(home slot, 32-bit fingerprint) of a key: the low and high bits of one mixed hash."""
    x = mix64(key)
    return x & mask, x >> _S32


@njit(nogil=True, cache=True, inline="always")
def _find(index, row_ids, key, verify):
    """Row of key, or -1. A fingerprint match is confirmed against the stored id when `verify`; without,
    the first match's row is returned unconfirmed (for a caller that confirms it later)."""
    mask = np.uint64(index.shape[0] - 1)
    h, fp = _slot_of(key, mask)
    while True:
        s = index[h]
        if s == 0:
            return -1
        if s >> _S32 == fp:
            r = np.int64(s & _LOW32) - 1
            if not verify or row_ids[r] == key:
                return r
        h = (h + np.uint64(1)) & mask


@njit(**_PARALLEL)
def probe_rows(index, row_ids, ids, rows, values, out, copy):
    """With `copy`, out[i] = values[row of ids[i]] (zeros when absent); without, rows[i] = row of ids[i] (-1 absent).

    A software pipeline per chunk of ids: id i's slot is prefetched _AHEAD ids before its probe reads
    the fingerprint-matching candidate row, whose stored id (and, with `copy`, its values) is
    prefetched _ROW_LEAD ids before it is verified (and copied). So the dependent random misses of
    many ids are in flight at once, and each row is copied soon after its prefetch, while still in
    L1/L2. Candidates wait in a small ring, not a full-length array. A fingerprint false match (about 1
    in 4 billion) falls back to a full probe.
    """
    n = ids.shape[0]
    mask = np.uint64(index.shape[0] - 1)
    zero = np.float32(0.0)
    lead = _AHEAD + _ROW_LEAD
    for c in prange((n + _PIPE_CHUNK - 1) // _PIPE_CHUNK):
        ring = np.empty(_RING, np.int64)
        start = c * _PIPE_CHUNK
        end = min(n, start + _PIPE_CHUNK)
        for i in range(start, end + lead):
            if i < end:
                prefetch(index, np.int64(mix64(ids[i]) & mask))
            p = i - _AHEAD
            if start <= p < end:
                r = _find(index, row_ids, ids[p], False)
                ring[p & (_RING - 1)] = r
                if r >= 0:
                    prefetch(row_ids, r)
                    if copy:
                        prefetch_row(values, r)
            g = p - _ROW_LEAD
            if start <= g < end:
                r = ring[g & (_RING - 1)]
                if r >= 0 and row_ids[r] != ids[g]:
                    r = _find(index, row_ids, ids[g], True)
                if copy:
                    for j in range(values.shape[1]):
                        out[g, j] = values[r, j] if r >= 0 else zero
                else:
                    rows[g] = r


@njit(nogil=True, cache=True)
def probe(index, row_ids, ids, rows):
    """rows[i] = row of ids[i], or -1 when absent."""
    probe_rows(index, row_ids, ids, rows, np.empty((0, 0), np.float32), np.empty((0, 0), np.float32), False)


@njit(nogil=True, cache=True)
def lookup_rows(index, row_ids, values, ids, out):
    """out[i] = values[row of ids[i]] (zeros when absent), in one pass."""
    probe_rows(index, row_ids, ids, np.empty(0, np.int64), values, out, True)


@njit(**_SERIAL)
def insert(index, ids, first_row):
    """Insert absent, distinct `ids` as rows first_row, first_row+1, … (caller guarantees free space)."""
    mask = np.uint64(index.shape[0] - 1)
    n = ids.shape[0]
    for i in range(n):
        if i + _AHEAD < n:
            prefetch(index, np.int64(mix64(ids[i + _AHEAD]) & mask))
        h, fp = _slot_of(ids[i], mask)
        while index[h] != 0:
            h = (h + np.uint64(1)) & mask
        index[h] = fp << _S32 | np.uint64(first_row + i + 1)


@njit(**_SERIAL)
def rebuild(index, row_ids, n):
    """Reset the index to map row_ids[r] → r for r < n."""
    index[:] = 0
    insert(index, row_ids[:n], 0)


@njit(**_PARALLEL)
def gather(values, rows, out):
    """out[i] = values[rows[i]] (zeros where rows[i] < 0)."""
    zero = np.float32(0.0)
    for i in prange(rows.shape[0]):
        r = rows[i]
        for j in range(values.shape[1]):
            out[i, j] = values[r, j] if r >= 0 else zero


@njit(**_PARALLEL)
def scatter_rows(values, rows, src, add):
    """values[rows[i]] = src[i] (or += when `add`), skipping rows[i] < 0; rows are distinct."""
    for i in prange(rows.shape[0]):
        prefetch_rows_ahead(rows, i, (values,))
        r = rows[i]
        if r >= 0:
            if add:
                for j in range(src.shape[1]):
                    values[r, j] += src[i, j]
            else:
                for j in range(src.shape[1]):
                    values[r, j] = src[i, j]


@njit(**_SERIAL)
def dedup_groups(ids):
    """Distinct ids with their groups of positions in `ids`.

    Returns (unique ids in first-seen order, inverse index per input, occurrences per unique id,
    first position per unique id, next position of the same id per input or -1): the positions of
    unique id k are first[k], nxt[first[k]], … in input order.
    """
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
    first = np.empty(n, np.int32)
    last = np.empty(n, np.int32)
    nxt = np.empty(n, np.int32)
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
                first[u] = i
                s = u
                u += 1
                break
            if tkeys[h] == key:
                nxt[last[s]] = i
                break
            h = (h + np.uint64(1)) & mask
        last[s] = i
        nxt[i] = -1
        inv[i] = s
        counts[s] += 1
    return uniq[:u], inv, counts[:u], first[:u], nxt


@njit(**_SERIAL)
def dedup(ids):
    """Return (unique ids in first-seen order, inverse index per input, occurrences per unique id)."""
    uniq, inv, counts, _, _ = dedup_groups(ids)
    return uniq, inv, counts


@njit(**_PARALLEL)
def combine_groups(src, first, nxt, last_wins):
    """out[k] = sum (or last, in input order) of src[p] over the positions p of group k (see dedup_groups)."""
    out = np.empty((first.shape[0], src.shape[1]), np.float32)
    for k in prange(first.shape[0]):
        p = first[k]
        for j in range(src.shape[1]):
            out[k, j] = src[p, j]
        p = nxt[p]
        while p >= 0:
            for j in range(src.shape[1]):
                out[k, j] = src[p, j] if last_wins else out[k, j] + src[p, j]
            p = nxt[p]
    return out


@njit(**_PARALLEL)
def stamp(update_time, rows, t):
    """update_time[rows[i]] = t for rows[i] >= 0."""
    for i in prange(rows.shape[0]):
        ra = row_ahead(rows, i)
        if ra >= 0:
            prefetch(update_time, ra)
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
