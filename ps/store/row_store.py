"""Dense, 64-byte-aligned row arrays of one table: values, per-segment optimizer state, ids, timestamps.

Rows 0..size-1 are live; new rows are appended, so a batch of inserts is one contiguous row range.
Growth allocates bigger arrays and copies the live rows; the table holds its write lock meanwhile, so no
reader sees a half-grown store. The initial allocation is zero-filled, so a pre-sized table takes its
page faults at construction rather than inside inserts.
"""
from __future__ import annotations

import numpy as np

from ps.config import TableConfig
from ps.store.optimizers import OPTIMIZERS

_ALIGN = 64


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """np.empty whose data starts on a cache line (numpy's default is page+16 B: rows straddle lines)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    offset = (-raw.ctypes.data) % _ALIGN
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


class RowStore:
    def __init__(self, config: TableConfig, capacity: int) -> None:
        self.config = config
        self.dim = config.dim
        self.offsets = np.cumsum([0] + [s.dim for s in config.segments])[:-1].tolist()
        self.elem_layout = [OPTIMIZERS[s.optimizer.type].element_state(s.optimizer.params) for s in config.segments]
        self.row_layout = [OPTIMIZERS[s.optimizer.type].row_state(s.optimizer.params) for s in config.segments]
        self.size = 0
        self.capacity = 0
        self.values = aligned_empty((0, self.dim), np.float32)
        self.ids = np.empty(0, np.int64)
        self.update_time = np.empty(0, np.int64)
        self.elem_states = [[aligned_empty((0, s.dim), np.float32) for _ in lay]
                            for s, lay in zip(config.segments, self.elem_layout)]
        self.row_states = [np.empty((0, len(lay)), np.float64) for lay in self.row_layout]
        self.reserve(capacity, touch=True)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every per-row array by a stable name (the checkpoint's array names)."""
        out = {"ids": self.ids, "update_time": self.update_time, "values": self.values}
        for k, (lay, arrs) in enumerate(zip(self.elem_layout, self.elem_states)):
            for (name, _), arr in zip(lay, arrs):
                out[f"segment{k}.{name}"] = arr
        for k, arr in enumerate(self.row_states):
            if arr.shape[1]:
                out[f"segment{k}.row_state"] = arr
        return out

    def reserve(self, needed: int, touch: bool = False) -> None:
        if needed <= self.capacity:
            return
        cap = max(needed, 2 * self.capacity)
        n = self.size

        def grow(old, aligned=True):
            new = aligned_empty((cap,) + old.shape[1:], old.dtype) if aligned else np.empty((cap,) + old.shape[1:],
                                                                                            old.dtype)
            new[:n] = old[:n]
            if touch:
                new[n:] = 0
            return new

        self.values = grow(self.values)
        self.ids = grow(self.ids, False)
        self.update_time = grow(self.update_time, False)
        self.elem_states = [[grow(a) for a in arrs] for arrs in self.elem_states]
        self.row_states = [grow(a, False) for a in self.row_states]
        self.capacity = cap

    def init_state(self, r0: int, r1: int) -> None:
        """Optimizer-state init for rows r0..r1-1."""
        for lay, arrs in zip(self.elem_layout, self.elem_states):
            for (_, init), arr in zip(lay, arrs):
                arr[r0:r1] = init
        for lay, arr in zip(self.row_layout, self.row_states):
            for c, (_, init) in enumerate(lay):
                arr[r0:r1, c] = init

    def init_state_rows(self, rows: np.ndarray) -> None:
        for lay, arrs in zip(self.elem_layout, self.elem_states):
            for (_, init), arr in zip(lay, arrs):
                arr[rows] = init
        for lay, arr in zip(self.row_layout, self.row_states):
            for c, (_, init) in enumerate(lay):
                arr[rows, c] = init

    def keep(self, keep_rows: np.ndarray) -> None:
        """Compact to the given (sorted) live rows."""
        k = len(keep_rows)
        for arr in self.arrays().values():
            arr[:k] = arr[keep_rows]
        self.size = k

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values())
