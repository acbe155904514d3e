"""Memory-bounded occurrence counting for admission: a count-min sketch of 16-bit saturating counters.

An absent id is admitted once the number of times it has been seen (including this call) exceeds the
threshold, i.e. on its (threshold+1)-th occurrence. Count-min never under-counts, so collisions can
only admit an id early, never starve it; memory is 4 rows × next_pow2(capacity) × 2 bytes.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ps.kernels.hash_index import mix64

DEPTH = 4
_SATURATE = 65535
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(nogil=True, cache=True, error_model="numpy")
def _count(sketch, ids, counts, threshold, admitted):
    depth, width = sketch.shape
    mask = np.uint64(width - 1)
    for i in range(ids.shape[0]):
        est = _SATURATE
        for r in range(depth):
            h = mix64(np.int64(np.uint64(ids[i]) ^ (np.uint64(r + 1) * _GOLDEN))) & mask
            est = min(est, np.int64(sketch[r, h]))
        admitted[i] = est + counts[i] > threshold
        new = min(_SATURATE, est + counts[i])
        for r in range(depth):
            h = mix64(np.int64(np.uint64(ids[i]) ^ (np.uint64(r + 1) * _GOLDEN))) & mask
            if sketch[r, h] < new:
                sketch[r, h] = new


class AdmissionFilter:
    """Counts occurrences of ids not yet in the table; `threshold == 0` admits everything and stores nothing."""

    def __init__(self, threshold: int, capacity: int) -> None:
        self.threshold = threshold
        width = 1 << max(6, int(capacity - 1).bit_length())
        self.sketch = np.zeros((DEPTH, width) if threshold > 0 else (DEPTH, 0), np.uint16)

    def admit(self, ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Record `counts` more occurrences of each (distinct) id; return which ids are now admitted."""
        if self.threshold == 0:
            return np.ones(len(ids), bool)
        admitted = np.empty(len(ids), bool)
        _count(self.sketch, ids, counts.astype(np.int64), self.threshold, admitted)
        return admitted

    def merge(self, sketch: np.ndarray, replace: bool) -> None:
        """Fold in a saved sketch (sketches of disjoint id streams add up; saturating)."""
        if self.threshold == 0:
            return
        if sketch.shape != self.sketch.shape:
            raise ValueError(f"admission sketch shape {sketch.shape} != this table's {self.sketch.shape}")
        if replace:
            self.sketch[...] = sketch
        else:
            total = self.sketch.astype(np.uint32) + sketch
            np.minimum(total, _SATURATE, out=total)
            self.sketch[...] = total

    @property
    def nbytes(self) -> int:
        return self.sketch.nbytes
