"""Numba kernels for the id → row index (open addressing, linear probing) and for finding an update's rows.

Only the memory-latency-bound loops (probe, gather, optimizer steps) use the thread pool: every parallel region costs a
team wake-up and a barrier, which on a busy machine can cost more than the loop itself.

The index is one uint64 array of slots, power-of-two capacity, kept at most half full. A slot holds a
32-bit fingerprint of the id (high bits of its hash; the low bits pick the home slot) and row + 1 (0 =
empty); ids may take any value. A fingerprint match is confirmed against the row's stored id, so the
table stays collisionless. 8-byte slots halve the index (16 MiB for 1M ids), which keeps more of it in
cache; the confirming read is prefetched. Rows live in separate dense arrays; the index only maps ids to
row numbers, so growing the index never moves row data.

A lookup so reads three random cache lines (slot, stored id, values row) where a plain gather reads one.
16-byte slots holding the whole id and the row (no confirming read; at up to 3/4 load in the same bytes,
or at the same load in twice the bytes) were measured slower than this layout on a 50M-row table, not
faster; prefetching the slot further ahead on a large index helped more (docs/design-notes.md).

An update (gradients, assign) finds each id's row in one probe over the ids as they arrive, repeats
included: there is no separate dedupe pass. The probe claims every row it finds by writing the id's
position into the row's update_time, which is dead during an update (the update stamps it at the end,
under the same write lock; real times are >= 0, a claim is -2 - position), keeping the smallest
position; an id that finds its row claimed is a repeat. Ids with no row are inserted in order, and
inserting one that this call already inserted is a repeat too. Only when repeats were seen are they
folded into their row's first occurrence, values summed in input order, as a dedupe then sum would.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ps.kernels.atomics import atomic_compare_exchange
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


_AHEAD = 20
"""Probe loops prefetch the index slot of the key this many iterations ahead."""
_ROW_LEAD = 20
"""Pipelined probes prefetch a candidate row this many ids ahead of verifying (and copying) it."""
_DEEP_SLOTS = 1 << 22
"""An index of more slots than this (32 MiB, beyond the last-level cache) is probed with a deeper pipeline:
its slot lines come from memory, and 20 ids ahead was too short there; on a cache-resident index (1M ids)
the deeper pipeline was slower."""
_DEEP_AHEAD = 96
_DEEP_ROW_LEAD = 32
_PIPE_CHUNK = 8192
"""Ids per pipeline (one per parallel work item): long enough to amortise its ramp-up."""
_RING = 128
"""Hashes and candidate rows in flight per pipeline: a power of two above either pipeline's distances."""
_LOW32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
MAX_ROWS = (1 << 32) - 1
"""A slot keeps row + 1 in 32 bits."""
_ROWS, _COPY, _CLAIM = 0, 1, 2


@njit(nogil=True, cache=True, inline="always")
def _slot_of(key, mask):
    """(home slot, 32-bit fingerprint) of a key: the low and high bits of one mixed hash."""
    return _split(mix64(key), mask)


@njit(nogil=True, cache=True, inline="always")
def _split(x, mask):
    """(home slot, 32-bit fingerprint) of a mixed hash x."""
    return x & mask, x >> _S32


@njit(nogil=True, cache=True, inline="always")
def _find(index, row_ids, key, verify):
    """Row of key, or -2 - s when absent, s the empty slot that ended its probe (where it would be inserted).
    A fingerprint match is confirmed against the stored id when `verify`; without, the first match's row is
    returned unconfirmed (for a caller that confirms it later)."""
    return _find_hashed(index, row_ids, key, mix64(key), verify)


@njit(nogil=True, cache=True, inline="always")
def _find_hashed(index, row_ids, key, x, verify):
    """_find of a key whose mixed hash x the caller already has."""
    mask = np.uint64(index.shape[0] - 1)
    h, fp = _split(x, mask)
    while True:
        s = index[h]
        if s == 0:
            return -2 - np.int64(h)
        if s >> _S32 == fp:
            r = np.int64(s & _LOW32) - 1
            if not verify or row_ids[r] == key:
                return r
        h = (h + np.uint64(1)) & mask


@njit(nogil=True, cache=True, inline="always")
def _claim(marks, r, p, saved, repeated):
    """Record position p as an occurrence of row r, keeping in marks[r] the smallest position (as -2 - p).
    The occurrence that finds the row unclaimed (a real time, >= 0) saves that time in saved[p]. Every
    position that is not, or stops being, the smallest gets repeated[p]. True if p found r claimed."""
    m = marks[r]
    while True:
        if m >= 0:
            seen = atomic_compare_exchange(marks, r, m, -2 - p)
            if seen == m:
                saved[p] = m
                return False
            m = seen
            continue
        head = -2 - m
        if p > head:
            repeated[p] = True
            return True
        seen = atomic_compare_exchange(marks, r, m, -2 - p)
        if seen == m:
            repeated[head] = True
            return True
        m = seen


@njit(**_PARALLEL)
def probe_rows(index, row_ids, ids, rows, values, out, marks, saved, repeated, ends, tallies, mode):  # noqa: C901
    """Per id, by `mode`: _ROWS rows[i] = row of ids[i] (-1 absent); _COPY out[i] = its values (zeros when
    absent); _CLAIM as _ROWS, and claims the row, or for an absent id notes where its probe ended (see
    claim_rows).

    A software pipeline per chunk of ids: id i's slot is prefetched _AHEAD ids (_DEEP_AHEAD for a large
    index) before its probe reads the fingerprint-matching candidate row, whose stored id (and, with _COPY,
    its values; with _CLAIM, its mark) is prefetched _ROW_LEAD (_DEEP_ROW_LEAD) ids before it is verified
    (and copied). So the dependent
    random misses of many ids are in flight at once, and each row is copied soon after its prefetch,
    while still in L1/L2. Hashes and candidates wait in small rings (an id is hashed once), not
    full-length arrays. A fingerprint false match (about 1 in 4 billion) falls back to a full probe.
    """
    n = ids.shape[0]
    mask = np.uint64(index.shape[0] - 1)
    zero = np.float32(0.0)
    deep = index.shape[0] > _DEEP_SLOTS
    ahead = _DEEP_AHEAD if deep else _AHEAD
    row_lead = _DEEP_ROW_LEAD if deep else _ROW_LEAD
    lead = ahead + row_lead
    for c in prange((n + _PIPE_CHUNK - 1) // _PIPE_CHUNK):
        hashes = np.empty(_RING, np.uint64)
        ring = np.empty(_RING, np.int64)
        found_claimed = 0
        absent = 0
        start = c * _PIPE_CHUNK
        end = min(n, start + _PIPE_CHUNK)
        for i in range(start, end + lead):
            if i < end:
                x = mix64(ids[i])
                hashes[i & (_RING - 1)] = x
                prefetch(index, np.int64(x & mask))
            p = i - ahead
            if start <= p < end:
                r = _find_hashed(index, row_ids, ids[p], hashes[p & (_RING - 1)], False)
                ring[p & (_RING - 1)] = r
                if r >= 0:
                    prefetch(row_ids, r)
                    if mode == _COPY:
                        prefetch_row(values, r)
                    elif mode == _CLAIM:
                        prefetch(marks, r)
            g = p - row_lead
            if start <= g < end:
                r = ring[g & (_RING - 1)]
                if r >= 0 and row_ids[r] != ids[g]:
                    r = _find(index, row_ids, ids[g], True)
                if mode == _COPY:
                    if r >= 0:
                        for j in range(values.shape[1]):
                            out[g, j] = values[r, j]
                    else:
                        for j in range(values.shape[1]):
                            out[g, j] = zero
                    continue
                rows[g] = max(r, -1)
                if mode == _CLAIM:
                    saved[g] = -1
                    if r < 0:
                        ends[g] = -2 - r
                        absent += 1
                    elif _claim(marks, r, g, saved, repeated):
                        found_claimed += 1
        if mode == _CLAIM:
            tallies[c, 0] = found_claimed
            tallies[c, 1] = absent


@njit(nogil=True, cache=True)
def probe(index, row_ids, ids, rows):
    """rows[i] = row of ids[i], or -1 when absent."""
    none = np.empty(0, np.int64)
    probe_rows(index, row_ids, ids, rows, np.empty((0, 0), np.float32), np.empty((0, 0), np.float32), none, none,
               np.empty(0, np.bool_), none, np.empty((0, 2), np.int64), _ROWS)


@njit(nogil=True, cache=True)
def lookup_rows(index, row_ids, values, ids, out):
    """out[i] = values[row of ids[i]] (zeros when absent), in one pass."""
    none = np.empty(0, np.int64)
    probe_rows(index, row_ids, ids, none, values, out, none, none, np.empty(0, np.bool_), none,
               np.empty((0, 2), np.int64), _COPY)


@njit(nogil=True, cache=True)
def claim_rows(index, row_ids, marks, ids, rows, saved, repeated, ends):
    """rows[i] = row of ids[i] (-1 absent), claiming each row found: marks[row] (the row's update_time)
    ends as -2 - its first position in `ids`. saved[i] gets the time a claim replaced (-1 if none);
    repeated[i] (False on entry) is set for every position but the first of a row; for an absent id, ends[i]
    is the empty slot that ended its probe. Returns (how many positions found their row claimed: 0 iff no
    id repeats, absent ids)."""
    tallies = np.zeros(((ids.shape[0] + _PIPE_CHUNK - 1) // _PIPE_CHUNK, 2), np.int64)
    probe_rows(index, row_ids, ids, rows, np.empty((0, 0), np.float32), np.empty((0, 0), np.float32), marks, saved,
               repeated, ends, tallies, _CLAIM)
    return tallies[:, 0].sum(), tallies[:, 1].sum()


@njit(**_SERIAL)
def insert_absent(index, row_ids, marks, ids, rows, repeated, absent, ends, first_row, counts, slots):
    """Insert the ids at positions `absent` (rows[p] < 0), in order, as rows first_row, first_row+1, …;
    an id inserted earlier in this call is a repeat: it gets that row and repeated[p]. Sets rows[p] and,
    per new row k, its id, its mark (-2 - first position, as claim_rows), counts[k] (occurrences) and
    slots[k] (its index slot, for undo_inserts). Each insert walks on from ends[p], where claim_rows'
    probe of this index ended (every slot before it held another id); with ends=None, from the home
    slot. The caller guarantees room. Returns (new rows, repeats)."""
    mask = np.uint64(index.shape[0] - 1)
    m = absent.shape[0]
    k = 0
    repeats = 0
    for a in range(m):
        if a + _AHEAD < m:
            q = absent[a + _AHEAD]
            if ends is None:
                prefetch(index, np.int64(mix64(ids[q]) & mask))
            else:
                prefetch(index, ends[q])
        p = absent[a]
        key = ids[p]
        h, fp = _slot_of(key, mask)
        if ends is not None:
            h = np.uint64(ends[p])
        while True:
            s = index[h]
            if s == 0:
                r = first_row + k
                index[h] = fp << _S32 | np.uint64(r + 1)
                row_ids[r] = key
                marks[r] = -2 - p
                counts[k] = 1
                slots[k] = h
                k += 1
                break
            if s >> _S32 == fp:
                r = np.int64(s & _LOW32) - 1
                if row_ids[r] == key:  # the probe found no row, so this one was inserted by this call
                    counts[r - first_row] += 1
                    repeated[p] = True
                    repeats += 1
                    break
            h = (h + np.uint64(1)) & mask
        rows[p] = r
    return k, repeats


@njit(**_SERIAL)
def undo_inserts(index, slots, k):
    """Take back the last k inserts of insert_absent: emptying their slots newest first restores the index
    exactly as it was (each insert filled one empty slot)."""
    for j in range(k - 1, -1, -1):
        index[slots[j]] = 0


@njit(**_PARALLEL)
def renumber(rows, first_row, final):
    """rows[i] >= first_row becomes final[rows[i] - first_row] (-1: dropped)."""
    for i in prange(rows.shape[0]):
        r = rows[i]
        if r >= first_row:
            rows[i] = final[r - first_row]


@njit(**_SERIAL)
def fold_repeats(positions, marks, repeated, values, last_wins):
    """Distinct rows and their values after folding every repeated id into its first occurrence: the rows in
    first-seen order, each with the sum of its ids' values in input order (as a dedupe then sum would) or,
    with `last_wins`, the last value. `positions` are the rows per id, `marks` as claim_rows left them.

    One pass lists the first occurrences and the (first, repeat) pairs, the next gathers the first
    occurrences, the last adds the repeats. Adding inside the listing loop ran slower: its unpredictable
    branches kept flushing the chains of adds into hot rows.
    """
    n = positions.shape[0]
    index_of = np.empty(n, np.int64)
    firsts = np.empty(n, np.int64)
    pairs = np.empty((n, 2), np.int64)
    u = 0
    k = 0
    for p in range(n):
        if repeated[p]:
            first = -2 - marks[positions[p]]
            if first != p:
                pairs[k, 0] = first
                pairs[k, 1] = p
                k += 1
                continue
        index_of[p] = u
        firsts[u] = p
        u += 1
    rows = np.empty(u, np.int64)
    out = np.empty((u, values.shape[1]), values.dtype)
    for i in range(u):
        p = firsts[i]
        rows[i] = positions[p]
        for j in range(values.shape[1]):
            out[i, j] = values[p, j]
    for q in range(k):
        i, src = index_of[pairs[q, 0]], pairs[q, 1]
        if last_wins:
            for j in range(values.shape[1]):
                out[i, j] = values[src, j]
        else:
            for j in range(values.shape[1]):
                out[i, j] += values[src, j]
    return rows, out


@njit(**_PARALLEL)
def release_claims(marks, rows, saved):
    """Undo claim_rows: each claimed row gets back the time its claim replaced."""
    for i in prange(rows.shape[0]):
        if saved[i] >= 0:
            marks[rows[i]] = saved[i]


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
def has_repeats(ids):
    """True if some id occurs twice (a batch-local open-addressing set)."""
    n = ids.shape[0]
    cap = 16
    while cap < 2 * n:
        cap *= 2
    mask = np.uint64(cap - 1)
    keys = np.empty(cap, np.int64)
    used = np.zeros(cap, np.bool_)
    for i in range(n):
        h = mix64(ids[i]) & mask
        while used[h]:
            if keys[h] == ids[i]:
                return True
            h = (h + np.uint64(1)) & mask
        used[h] = True
        keys[h] = ids[i]
    return False


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
