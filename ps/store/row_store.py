"""Row arrays of one table: values, per-segment optimizer state, ids, timestamps.

Rows 0..size-1 are live; new rows are appended, so a batch of inserts is one contiguous row range.
Each array is a GrowableArray: growth never copies rows, and memory is faulted in ahead of the rows
being written, in bulk (a step of at least 1/16 of what is resident), so inserting kernels write into
resident pages. The table holds its write lock while the store grows, so no reader sees it half-grown;
views of the arrays must not be kept across `reserve` (see ps.store.growable_array).
"""
from __future__ import annotations

import numpy as np

from ps.config import TableConfig
from ps.store.growable_array import HUGE_PAGE, GrowableArray
from ps.store.optimizers import OPTIMIZERS

_POPULATE_AHEAD = 16
"""Populate at least 1/_POPULATE_AHEAD of the resident rows more than asked: few, large steps."""


class RowStore:
    def __init__(self, config: TableConfig, capacity: int) -> None:
        self.config = config
        self.dim = config.dim
        self.offsets = np.cumsum([0] + [s.dim for s in config.segments])[:-1].tolist()
        self.elem_layout = [OPTIMIZERS[s.optimizer.type].element_state(s.optimizer.params) for s in config.segments]
        self.row_layout = [OPTIMIZERS[s.optimizer.type].row_state(s.optimizer.params) for s in config.segments]
        self.size = 0
        self.capacity = 0
        self._ids = GrowableArray((), np.int64, 0)
        self._update_time = GrowableArray((), np.int64, 0)
        self._values = GrowableArray((self.dim,), np.float32, 0)
        self._elem_states = [[GrowableArray((s.dim,), np.float32, 0) for _ in lay]
                             for s, lay in zip(config.segments, self.elem_layout)]
        self._row_states = [GrowableArray((len(lay),), np.float64, 0) for lay in self.row_layout]
        self._changed = GrowableArray((), np.uint8, 0)
        """1 for a row changed since the online sync last took the changes (not saved: a sync-only mark)."""
        self.reserve(capacity, populate_all=True)

    # Views of the current memory (read again after `reserve`, which may move it).
    @property
    def ids(self) -> np.ndarray:
        return self._ids.array

    @property
    def update_time(self) -> np.ndarray:
        return self._update_time.array

    @property
    def changed(self) -> np.ndarray:
        return self._changed.array

    @property
    def values(self) -> np.ndarray:
        return self._values.array

    @property
    def elem_states(self) -> list[list[np.ndarray]]:
        return [[a.array for a in arrs] for arrs in self._elem_states]

    @property
    def row_states(self) -> list[np.ndarray]:
        return [a.array for a in self._row_states]

    def _growable(self) -> list[GrowableArray]:
        return [self._ids, self._update_time, self._values, *(a for arrs in self._elem_states for a in arrs),
                *self._row_states, self._changed]

    def arrays(self) -> dict[str, np.ndarray]:
        """Every per-row array by a stable name (the checkpoint's array names)."""
        out = {"ids": self.ids, "update_time": self.update_time, "values": self.values}
        for k, (lay, arrs) in enumerate(zip(self.elem_layout, self._elem_states)):
            for (name, _), arr in zip(lay, arrs):
                out[f"segment{k}.{name}"] = arr.array
        for k, arr in enumerate(self._row_states):
            if arr.row_shape[0]:
                out[f"segment{k}.row_state"] = arr.array
        return out

    def reserve(self, needed: int, populate_all: bool = False) -> None:
        """Room for `needed` rows, resident: address space doubles, memory is faulted in a step ahead."""
        if needed > self.capacity:
            cap = max(needed, 2 * self.capacity)
            for a in self._growable():
                a.grow(cap, keep_rows=self.size)
            self.capacity = cap
        for a in self._growable():
            if needed > a.populated:
                ahead = max(a.populated // _POPULATE_AHEAD, HUGE_PAGE // max(1, a.row_bytes))
                a.populate(self.capacity if populate_all else needed + ahead)

    def init_state(self, r0: int, r1: int) -> None:
        """Optimizer-state init for rows r0..r1-1."""
        for lay, arrs in zip(self.elem_layout, self._elem_states):
            for (_, init), arr in zip(lay, arrs):
                arr.array[r0:r1] = init
        for lay, arr in zip(self.row_layout, self._row_states):
            for c, (_, init) in enumerate(lay):
                arr.array[r0:r1, c] = init

    def init_state_rows(self, rows: np.ndarray) -> None:
        for lay, arrs in zip(self.elem_layout, self._elem_states):
            for (_, init), arr in zip(lay, arrs):
                arr.array[rows] = init
        for lay, arr in zip(self.row_layout, self._row_states):
            for c, (_, init) in enumerate(lay):
                arr.array[rows, c] = init

    def keep(self, keep_rows: np.ndarray) -> None:
        """Compact to the given (sorted) live rows."""
        k = len(keep_rows)
        for arr in [*self.arrays().values(), self.changed]:
            arr[:k] = arr[keep_rows]
        self.size = k

    @property
    def nbytes(self) -> int:
        """Resident bytes (populated rows), not address space."""
        return sum(a.populated_bytes for a in self._growable())
