"""Row arrays that grow without copying their contents and take their page faults in bulk.

A table that grows by allocating a bigger array and copying pays twice: for the copy, and for a
first-touch page fault on every 4 KiB page of the new memory, taken one at a time inside the kernels
that write rows. On a VM the second cost dominates (the host backs guest memory on first touch too).
So on Linux each array is an anonymous private mapping:

- capacity is address space, not memory (MAP_NORESERVE; pages nobody touched are not resident);
- growing is mremap(2): the kernel extends the mapping or moves its page tables, no byte is copied;
- pages are marked for transparent huge pages and faulted in by the owner ahead of use, in bulk, with
  one madvise(MADV_POPULATE_WRITE) per step (writing zeros where the kernel predates it).

A numpy view of the old mapping would dangle after mremap moved it. Python's mmap refuses to resize
while any view is alive (BufferError); the array is then copied into a new mapping instead, which
leaves that view valid (and stale), as copying growth always did. So owners must not keep views of
`array` across `grow`: read the attribute again after it. Elsewhere than Linux, plain numpy arrays.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import math
import mmap
import os
import sys
import threading
import time

import numpy as np

log = logging.getLogger(__name__)

_LINUX = sys.platform.startswith("linux")
_MAP_NORESERVE = 0x4000
_MADV_POPULATE_WRITE = 23
HUGE_PAGE = 2 << 20
_populated = [0, 0.0]
"""Bytes populated and seconds spent doing it, process-wide (see populate_stats)."""
_populated_lock = threading.Lock()
_populate_in_kernel = True
"""False once the kernel refused MADV_POPULATE_WRITE (before Linux 5.14): populate by writing zeros."""

if _LINUX:
    _libc = ctypes.CDLL(None, use_errno=True)  # ctypes drops the GIL during the call: other threads go on
    _madvise = _libc.madvise
    _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _madvise.restype = ctypes.c_int


def populate_stats() -> tuple[int, float]:
    """(bytes, seconds) faulted in by GrowableArray.populate in this process so far: what fresh memory costs
    here (a benchmark subtracts two readings)."""
    with _populated_lock:
        return int(_populated[0]), float(_populated[1])


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


class GrowableArray:
    """An array of `capacity` rows of `row_shape` whose rows below `populated` are resident."""

    def __init__(self, row_shape: tuple[int, ...], dtype, capacity: int) -> None:
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.row_bytes = self.dtype.itemsize * math.prod(self.row_shape)
        self._mapped = _LINUX and self.row_bytes > 0
        self._map: mmap.mmap | None = None
        self.capacity = 0
        self.populated = 0
        self.array = np.empty((0, *self.row_shape), self.dtype)
        self.grow(capacity, keep_rows=0)

    @property
    def populated_bytes(self) -> int:
        return self.populated * self.row_bytes

    def grow(self, capacity: int, keep_rows: int) -> None:
        """Make room for `capacity` rows; rows below `keep_rows` keep their values."""
        if capacity <= self.capacity:
            return
        if not self._mapped:
            new = np.empty((capacity, *self.row_shape), self.dtype)
            new[:keep_rows] = self.array[:keep_rows]
            self.array, self.capacity, self.populated = new, capacity, capacity
            return
        length = _round_up(max(1, capacity * self.row_bytes), mmap.PAGESIZE)
        if self._map is not None:
            self.array = None  # type: ignore[assignment]  # drop our own view: mremap may move the mapping
            try:
                self._map.resize(length)
            except (BufferError, OSError, SystemError, ValueError) as exc:
                log.debug("growing in place failed (%s): copying %d rows into a new mapping", exc, keep_rows)
                self._remap_by_copy(length, keep_rows)
            self._view(capacity)
            return
        self._map = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | _MAP_NORESERVE)
        self._view(capacity)

    def _view(self, capacity: int) -> None:
        assert self._map is not None
        # THP disabled or unsupported: regular pages work the same, with more faults
        with contextlib.suppress(OSError):
            self._map.madvise(mmap.MADV_HUGEPAGE)
        self.capacity = capacity
        self.array = np.frombuffer(self._map, self.dtype, capacity * math.prod(self.row_shape)).reshape(
            (capacity, *self.row_shape))

    def _remap_by_copy(self, length: int, keep_rows: int) -> None:
        assert self._map is not None
        old = np.frombuffer(self._map, np.uint8, keep_rows * self.row_bytes)
        new_map = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | _MAP_NORESERVE)
        self._map = new_map
        self.populated = 0
        self._populate_bytes(0, keep_rows * self.row_bytes)
        np.frombuffer(new_map, np.uint8, len(old))[:] = old
        self.populated = keep_rows

    def populate(self, rows: int) -> None:
        """Fault in rows [populated, rows) now, in one step, so writes to them take no page faults."""
        rows = min(rows, self.capacity)
        if rows <= self.populated:
            return
        if self._mapped:
            self._populate_bytes(self.populated * self.row_bytes, rows * self.row_bytes)
        self.populated = rows

    def _populate_bytes(self, start: int, stop: int) -> None:
        """Bytes [start, stop) were never written (so writing zeros there is harmless)."""
        assert self._map is not None
        stop = min(len(self._map), _round_up(stop, mmap.PAGESIZE))
        if stop <= start:
            return
        t0 = time.perf_counter()
        try:
            self._fault_in(start, stop)
        finally:
            with _populated_lock:
                _populated[0] += stop - start
                _populated[1] += time.perf_counter() - t0

    def _fault_in(self, start: int, stop: int) -> None:
        global _populate_in_kernel
        assert self._map is not None
        if _populate_in_kernel:
            first = start - start % mmap.PAGESIZE
            base = np.frombuffer(self._map, np.uint8, 1).ctypes.data
            if _madvise(base + first, stop - first, _MADV_POPULATE_WRITE) == 0:
                return
            err = ctypes.get_errno()
            if err != errno.EINVAL:  # EINVAL: a kernel before 5.14; anything else (ENOMEM) is real
                raise MemoryError(f"cannot populate {stop - first:,} bytes of table memory: {os.strerror(err)}")
            _populate_in_kernel = False
        np.frombuffer(self._map, np.uint8, stop - start, start)[:] = 0
