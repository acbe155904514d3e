"""What store lookups are measured against in the same run: a random-row gather (numba prange over the
rows, what memory allows for reading rows at all), and the alternating best-of timing both benchmarks use."""
from __future__ import annotations

import time

from numba import njit, prange


@njit(nogil=True, cache=True, parallel=True, error_model="numpy")
def gather_rows(values, rows, out):
    """out[i] = values[rows[i]]."""
    for i in prange(rows.shape[0]):
        r = rows[i]
        for j in range(values.shape[1]):
            out[i, j] = values[r, j]


def timed(fn, arg) -> float:
    t0 = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0


def best_times(fns, inputs, rounds: int = 2) -> list[float]:
    """Warm every fn up on inputs[0], then alternate them over the remaining inputs, `rounds` times (a burst
    of other load on the shared machine can cover a whole round); the best time of each."""
    for fn in fns:
        fn(inputs[0])
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for arg in inputs[1:]:
            for k, fn in enumerate(fns):
                best[k] = min(best[k], timed(fn, arg))
    return best
