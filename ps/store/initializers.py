"""Row initializers. Random values are a hash of (seed, id, column), so a row's initial value depends
only on its id: independent of insertion order, thread timing, growth, save/load or re-sharding."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ps.config import InitializerConfig
from ps.kernels.hash_index import mix64

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(nogil=True, cache=True, error_model="numpy", parallel=True)
def _uniform(w, c0, d, rows, ids, lo, hi, seed):
    base = mix64(np.int64(seed)) * _GOLDEN
    scale = (hi - lo) / 16777216.0
    for i in prange(ids.shape[0]):
        h = mix64(np.int64(np.uint64(ids[i]) ^ base))
        for j in range(d):
            x = mix64(np.int64(h + np.uint64(j) * _GOLDEN))
            w[rows[i], c0 + j] = lo + np.float64(x >> np.uint64(40)) * scale


def initialize_rows(values: np.ndarray, c0: int, d: int, rows: np.ndarray | slice, ids: np.ndarray,
                    init: InitializerConfig) -> None:
    """Fill columns [c0, c0+d) of `rows` (an index array or a slice), which hold `ids`."""
    if init.type == "zeros":
        values[rows, c0:c0 + d] = 0.0
    elif init.type == "ones":
        values[rows, c0:c0 + d] = 1.0
    elif init.type == "constant":
        values[rows, c0:c0 + d] = init.params["value"]
    elif init.type == "random_uniform":
        p = init.params
        if isinstance(rows, slice):
            rows = np.arange(rows.start, rows.stop)
        _uniform(values, c0, d, rows, ids, float(p["minval"]), float(p["maxval"]), int(p["seed"]))
    else:
        raise ValueError(f"unknown initializer type {init.type!r}")
