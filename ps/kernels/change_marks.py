"""Marks of the rows an update changed, for the online sync of a training shard to the serving shards.

The mark is one byte per row, set in the same pass that stamps the row's update time: the update already
holds the row's cache lines, so tracking changes costs one more byte store per row on the hot path.
"""
from __future__ import annotations

from numba import njit, prange

from ps.kernels.cache_prefetch import prefetch, row_ahead

_PARALLEL = dict(nogil=True, cache=True, error_model="numpy", parallel=True)


@njit(**_PARALLEL)
def stamp_and_mark(update_time, changed, rows, t):
    """update_time[rows[i]] = t and changed[rows[i]] = 1 for rows[i] >= 0."""
    for i in prange(rows.shape[0]):
        ra = row_ahead(rows, i)
        if ra >= 0:
            prefetch(update_time, ra)
        r = rows[i]
        if r >= 0:
            update_time[r] = t
            changed[r] = 1
