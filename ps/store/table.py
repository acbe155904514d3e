"""EmbeddingTable: a collisionless int64 id → float32 row table with server-side optimizers.

Concurrency: lookups and saves hold the read side of a readers/writer lock; every mutation (updates,
inserts, growth, eviction, restore) holds the write side. Input checking happens before the lock. An
update finds its rows in one probe that also notices repeated ids (ps.kernels.hash_index); summing their
values, the one check that needs the rows, runs under the lock, and a failure there undoes the probe's
marks and inserts, so a rejected call changes nothing. Kernels release the GIL and run
`parallel=True`, so one call already uses every core.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from ps.config import TableConfig
from ps.kernels import hash_index as H
from ps.kernels import numba_cache
from ps.kernels.change_marks import stamp_and_mark
from ps.kernels.half_floats import to_float16
from ps.persist.atomic_files import CorruptCheckpointError
from ps.persist.table_io import SavedRows, save_rows
from ps.store.admission import AdmissionFilter
from ps.store.expiry import expired_mask
from ps.store.growable_array import GrowableArray
from ps.store.initializers import initialize_rows
from ps.store.optimizers import OPTIMIZERS, check_step
from ps.store.row_store import RowStore
from ps.store.rwlock import RWLock

log = logging.getLogger(__name__)
_RESTORE_IGNORED_KEYS = ("initial_capacity",)
_PARALLEL_MIN_WORK = 1 << 15
"""Below this many floats per call, waking the kernel thread pool costs more than it saves."""


_thread_count_calls: tuple[Callable[[], int], Callable[[int], None]] | None = None


def _thread_count_entry_points() -> tuple[Callable[[], int], Callable[[int], None]]:
    """numba's get/set of the calling thread's kernel thread count, without the public functions' process
    lock and jitted argument check on every call (they cost more than a small request's kernels)."""
    global _thread_count_calls
    if _thread_count_calls is None:
        numba.get_num_threads()  # launches numba's threads, which binds the entry points below
        from numba.np.ufunc import parallel
        _thread_count_calls = (parallel._get_num_threads, parallel._set_num_threads)  # type: ignore[attr-defined]
    return _thread_count_calls


class _OneKernelThread:
    """Small calls' kernels on the calling thread only (numba's thread count is per calling thread), the
    count restored afterwards."""

    __slots__ = ("previous",)

    def __enter__(self) -> None:
        get_count, set_count = _thread_count_entry_points()
        self.previous = get_count()
        set_count(1)

    def __exit__(self, *exc) -> None:
        _thread_count_entry_points()[1](self.previous)


_ALL_KERNEL_THREADS = contextlib.nullcontext()


def _threads_for(work: int) -> contextlib.AbstractContextManager:
    """Below _PARALLEL_MIN_WORK floats, the kernels run on the calling thread alone."""
    return _ALL_KERNEL_THREADS if work >= _PARALLEL_MIN_WORK else _OneKernelThread()


def _pow2_at_least(n: int) -> int:
    return 1 << max(4, int(n - 1).bit_length())


def _as_ids(ids) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {a.shape}")
    if a.size == 0:
        return np.empty(0, np.int64)
    if a.dtype.kind not in "iu" or (a.dtype.kind == "u" and a.dtype.itemsize == 8):
        raise TypeError(f"ids must be a signed integer array (int64), got dtype {a.dtype}")
    return np.ascontiguousarray(a, np.int64)


def _as_int(value, name: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _as_shard(shard) -> tuple[int, int] | None:
    if shard is None:
        return None
    if not isinstance(shard, tuple | list) or len(shard) != 2:
        raise ValueError(f"shard must be (k, K), got {shard!r}")
    k, num = _as_int(shard[0], "shard k", 0), _as_int(shard[1], "shard K", 1)
    if k >= num:
        raise ValueError(f"shard k={k} must be < K={num}")
    return k, num


@dataclass(frozen=True)
class CheckedUpdate:
    """An update of one table that passed all of that table's input checks (`check_gradients`/`check_values`)."""

    table: EmbeddingTable
    kind: str  # "gradients" or "values"
    ids: np.ndarray
    values: np.ndarray
    update_time: int
    global_step: int = 0
    learning_rates: list[float] | None = None  # gradients only


@dataclass(frozen=True)
class TableChanges:
    """What changed in a table since the online sync last asked: the changed rows' ids and current values,
    and the ids removed (evicted) since then that are still absent."""

    ids: np.ndarray
    values: np.ndarray
    removed: np.ndarray


@dataclass(frozen=True)
class CheckedSync:
    """A sync batch of one table that passed the table's input checks (`check_sync`)."""

    table: EmbeddingTable
    ids: np.ndarray
    values: np.ndarray
    removed: np.ndarray


@dataclass
class _Claimed:
    """An update's rows: `rows` distinct, in first-seen order (-1: not admitted), with `values` to match
    (when given); `positions` every input id's row (-1: not admitted); rows from `first_new_row` on were
    created by this update."""

    rows: np.ndarray
    values: np.ndarray | None
    positions: np.ndarray
    first_new_row: int


class _RowsRenumbered(Exception):
    """Raised inside a save when eviction or a restore moved rows after the save chose them."""


class EmbeddingTable:
    def __init__(self, config: TableConfig) -> None:
        numba_cache.note_cold_cache()
        self._cfg = config
        self._config_dict = config.to_dict()
        self._opts = [OPTIMIZERS[s.optimizer.type] for s in config.segments]
        self._store = RowStore(config, config.initial_capacity)
        self._index = self._new_index(_pow2_at_least(2 * config.initial_capacity))
        self._filter = AdmissionFilter(config.occurrence_threshold, config.filter_capacity)
        self._lock = RWLock()
        self._max_update_time = 0
        self._layout_version = 0  # bumped whenever rows are renumbered: a save in progress must start over
        self._tracking = False  # record changed rows and removed ids for the online sync (`take_changes`)
        self._removed: list[np.ndarray] = []
        self._changes_lock = threading.Lock()  # the sync's take/keep of changes, against each other

    @staticmethod
    def _new_index(capacity: int) -> np.ndarray:
        """A zeroed index, resident (faulted in bulk, huge pages) before the first insert touches it."""
        index = GrowableArray((), np.uint64, capacity)
        index.populate(capacity)
        return index.array

    @classmethod
    def from_dict(cls, cfg: dict) -> EmbeddingTable:
        return cls(TableConfig.from_dict(cfg))

    # ---- introspection
    @property
    def config(self) -> dict:
        return copy.deepcopy(self._config_dict)

    @property
    def dim(self) -> int:
        return self._store.dim

    @property
    def segment_dims(self) -> list[int]:
        return [s.dim for s in self._cfg.segments]

    @property
    def size(self) -> int:
        return self._store.size

    @property
    def max_update_time(self) -> int:
        return self._max_update_time

    @property
    def memory_bytes(self) -> int:
        return self._store.nbytes + self._index.nbytes + self._filter.nbytes

    def __repr__(self) -> str:
        return f"EmbeddingTable(dim={self.dim}, size={self.size}, optimizers={[o.name for o in self._opts]})"

    # ---- input checks (before any lock; a rejected call changes nothing)
    def _as_rows(self, values, n: int, what: str) -> np.ndarray:
        a = np.asarray(values)
        if a.dtype.kind != "f":
            raise TypeError(f"{what} must be a float array, got dtype {a.dtype}")
        if a.shape != (n, self.dim):
            raise ValueError(f"{what} must have shape ({n}, {self.dim}) for {n} ids, got {a.shape}")
        with np.errstate(over="ignore"):
            a = np.ascontiguousarray(a, np.float32)
        with _threads_for(a.size):
            finite = H.all_finite(a) if a.size else True
        if not finite:
            row, column = np.argwhere(~np.isfinite(a))[0]
            raise ValueError(f"{what} contain NaN/Inf or values beyond float32 range (first at row {row}, "
                             f"column {column})")
        return a

    def _learning_rates(self, learning_rates, global_step: int) -> list[float]:
        if learning_rates is None:
            lrs = [s.optimizer.params.get("learning_rate", 0.0) for s in self._cfg.segments]
        else:
            lrs = [float(x) for x in np.asarray(learning_rates, np.float64).reshape(-1)]
            if len(lrs) != len(self._cfg.segments):
                raise ValueError(f"learning_rates has {len(lrs)} values, the table has {len(self._cfg.segments)} "
                                 "segments")
        for k, (opt, lr) in enumerate(zip(self._opts, lrs)):
            check_step(opt.name, lr, global_step, f"segments[{k}] ({opt.name})")
        return lrs

    # ---- internals (caller holds the write lock)
    def _reserve(self, needed: int) -> None:
        if needed > H.MAX_ROWS:
            raise ValueError(f"a table holds at most {H.MAX_ROWS:,} rows per shard; {needed:,} were asked for "
                             "(use more shards)")
        self._store.reserve(needed)
        if 2 * needed > len(self._index):
            self._index = self._new_index(_pow2_at_least(max(2 * needed, 2 * len(self._index))))
            H.insert(self._index, self._store.ids[:self._store.size], 0)

    def _insert(self, new_ids: np.ndarray, init_values: bool = True) -> np.ndarray:
        """Append absent, distinct ids as freshly initialised rows; returns their row numbers.

        `init_values=False` skips the initializer when the caller overwrites every value anyway.
        """
        st = self._store
        r0, r1 = st.size, st.size + len(new_ids)
        self._reserve(r1)
        H.insert(self._index, new_ids, r0)
        st.ids[r0:r1] = new_ids
        self._init_rows(r0, r1, init_values)
        return np.arange(r0, r1, dtype=np.int64)

    def _probe(self, ids: np.ndarray) -> np.ndarray:
        rows = np.empty(len(ids), np.int64)
        H.probe(self._index, self._store.ids, ids, rows)
        return rows

    def _claim(self, ids: np.ndarray, values: np.ndarray | None, last_wins: bool, init_values: bool = True) -> _Claimed:
        """The rows of an update of `ids`: one probe finds and claims them, noticing repeated ids, and absent ids
        get rows if admitted. Only if ids repeat are the repeats folded into each row's first occurrence (values
        summed in input order, or the last kept). The caller then updates `rows` with `values` and must `_touch`
        them, even if the update fails (their update_time holds claims until then). If anything fails in here,
        the table is left as it was.
        """
        st = self._store
        n = len(ids)
        positions, saved, ends = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
        repeated = np.zeros(n, np.bool_)
        index = self._index
        repeats, absent = H.claim_rows(index, st.ids, st.update_time, ids, positions, saved, repeated, ends)
        r0, new = st.size, 0
        counts, slots = np.empty(0, np.int64), np.empty(0, np.uint64)
        try:
            if absent:
                self._reserve(r0 + int(absent))
                counts, slots = np.empty(absent, np.int64), np.empty(absent, np.uint64)
                new, again = H.insert_absent(self._index, st.ids, st.update_time, ids, positions, repeated,
                                             np.flatnonzero(positions < 0), ends if self._index is index else None,
                                             r0, counts, slots)
                repeats += again
            rows = positions
            if repeats:
                rows, values = H.fold_repeats(positions, st.update_time, repeated,
                                              np.empty((n, 0), np.float32) if values is None else values, last_wins)
                if not last_wins and not H.all_finite(values):
                    raise ValueError("summing duplicate ids overflowed float32")
        except BaseException:
            H.undo_inserts(self._index, slots, new)
            H.release_claims(st.update_time, positions, saved)
            raise
        if new:
            new = self._admit(r0, new, counts, slots, [positions] if rows is positions else [positions, rows])
            self._init_rows(r0, r0 + new, init_values)
        return _Claimed(rows, values, positions, r0)

    def _admit(self, r0: int, new: int, counts: np.ndarray, slots: np.ndarray, row_arrays: list[np.ndarray]) -> int:
        """Keep the rows r0.. r0+new-1 just inserted for admitted ids; take the others out again (the row arrays
        are renumbered). Returns how many stay."""
        st = self._store
        new_ids = st.ids[r0:r0 + new]
        admitted = self._filter.admit(new_ids, counts[:new])
        if admitted.all():
            return new
        kept = np.ascontiguousarray(new_ids[admitted])
        H.undo_inserts(self._index, slots, new)
        H.insert(self._index, kept, r0)
        st.ids[r0:r0 + len(kept)] = kept
        final = np.full(new, -1, np.int64)
        final[admitted] = np.arange(r0, r0 + len(kept))
        for rows in row_arrays:
            H.renumber(rows, r0, final)
        return len(kept)

    def _init_rows(self, r0: int, r1: int, init_values: bool) -> None:
        """Initial values and optimizer state of new rows r0..r1-1 (whose ids are stored); they become live."""
        st = self._store
        if init_values:
            for seg, c0 in zip(self._cfg.segments, st.offsets):
                initialize_rows(st.values, c0, seg.dim, slice(r0, r1), st.ids[r0:r1], seg.initializer)
        st.init_state(r0, r1)
        st.changed[r0:r1] = 0
        st.size = r1

    def _touch(self, rows: np.ndarray, update_time: int) -> None:
        if self._tracking:
            stamp_and_mark(self._store.update_time, self._store.changed, rows, update_time)
        else:
            H.stamp(self._store.update_time, rows, update_time)
        self._max_update_time = max(self._max_update_time, update_time)

    # ---- public operations
    def lookup(self, ids, dtype=np.float32, out: np.ndarray | None = None) -> np.ndarray:
        """Rows for `ids` ([n, dim]); absent ids read as zeros. Never inserts and never counts occurrences.

        `out` (C-contiguous [n, dim] of `dtype`) receives the rows instead of a new array: a server can
        reuse its buffers and skip the page faults of a fresh multi-MB array per call.
        """
        ids = _as_ids(ids)
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float16):
            raise TypeError(f"lookup dtype must be float32 or float16, got {dtype}")
        shape = (len(ids), self.dim)
        if out is not None and (not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != dtype
                                or not out.flags.c_contiguous or not out.flags.writeable):
            raise ValueError(f"out must be a writeable C-contiguous {dtype} array of shape {shape}")
        dest = out if out is not None and dtype == np.float32 else np.empty(shape, np.float32)
        with _threads_for(dest.size), self._lock.read():
            H.lookup_rows(self._index, self._store.ids, self._store.values, ids, dest)
        if dtype == np.float32:
            return dest
        return to_float16(dest, out)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of every stored id and its row, in row order: the whole table out of the store (an export)."""
        with self._lock.read():
            n = self._store.size
            return self._store.ids[:n].copy(), self._store.values[:n].copy()

    def contains(self, ids) -> np.ndarray:
        ids = _as_ids(ids)
        with self._lock.read():
            return self._probe(ids) >= 0

    def row_arrays(self, ids) -> dict[str, np.ndarray]:
        """Copies of every per-row array (values, optimizer state, timestamps; named as in a checkpoint) of
        the given ids, which must all be present. For converting state to or from other formats."""
        ids = _as_ids(ids)
        with self._lock.read():
            rows = self._probe(ids)
            if (rows < 0).any():
                raise KeyError(f"ids {ids[rows < 0][:10].tolist()} are not in the table")
            return {name: arr[rows].copy() for name, arr in self._store.arrays().items()}

    def set_row_arrays(self, ids, arrays: dict[str, np.ndarray]) -> None:
        """Overwrite named per-row arrays (not `ids`) of ids already in the table."""
        ids = _as_ids(ids)
        with self._lock.write():
            rows = self._probe(ids)
            if (rows < 0).any():
                raise KeyError(f"ids {ids[rows < 0][:10].tolist()} are not in the table")
            current = self._store.arrays()
            for name, values in arrays.items():
                if name == "ids" or name not in current:
                    raise KeyError(f"{name!r} is not a per-row array of this table (have {sorted(current)})")
                current[name][rows] = np.asarray(values).reshape(current[name][rows].shape)

    def apply_gradients(self, ids, grads, global_step: int = 0, update_time: int = 0, learning_rates=None) -> None:
        """One optimizer step per distinct id with its summed gradient; admitted absent ids are created first."""
        self.apply_checked(self.check_gradients(ids, grads, global_step, update_time, learning_rates))

    def check_gradients(self, ids, grads, global_step: int = 0, update_time: int = 0,
                        learning_rates=None) -> CheckedUpdate:
        """Every check `apply_gradients` makes, nothing applied: a caller with several updates (a request of
        several tables) checks them all before it changes any, and each is checked exactly once."""
        ids = _as_ids(ids)
        grads = self._as_rows(grads, len(ids), "grads")
        global_step = _as_int(global_step, "global_step")
        update_time = _as_int(update_time, "update_time", 0)
        return CheckedUpdate(self, "gradients", ids, grads, update_time, global_step,
                             self._learning_rates(learning_rates, global_step))

    def apply_checked(self, update: CheckedUpdate) -> None:
        """Apply gradients `check_gradients` of this table accepted."""
        if update.table is not self or update.kind != "gradients":
            raise ValueError("apply_checked takes the result of this table's check_gradients")
        if not len(update.ids):
            return
        with _threads_for(update.values.size):
            self._apply(update.ids, update.values, update.global_step, update.update_time, update.learning_rates or [])

    def _apply(self, ids, grads, global_step: int, update_time: int, lrs: list[float]) -> None:
        st = self._store
        with self._lock.write():
            got = self._claim(ids, grads, last_wins=False)
            try:
                for k, (seg, opt, c0) in enumerate(zip(self._cfg.segments, self._opts, st.offsets)):
                    p = seg.optimizer.params
                    opt.step(st.values, c0, seg.dim, got.rows, got.values, lrs[k], p.get("weight_decay_factor", 0.0),
                             global_step, p, st.elem_states[k], st.row_states[k])
            finally:
                self._touch(got.rows, update_time)

    def check_values(self, ids, values, update_time: int = 0) -> CheckedUpdate:
        """Every check `assign`/`assign_add` make, nothing written (see `check_gradients`)."""
        ids = _as_ids(ids)
        return CheckedUpdate(self, "values", ids, self._as_rows(values, len(ids), "values"),
                             _as_int(update_time, "update_time", 0))

    def write_checked(self, update: CheckedUpdate, add: bool) -> None:
        """`assign` (add=False) or `assign_add` (add=True) of values `check_values` of this table accepted."""
        if update.table is not self or update.kind != "values":
            raise ValueError("write_checked takes the result of this table's check_values")
        self._write_rows(update.ids, update.values, update.update_time, add)

    def _write(self, ids, values, update_time: int, add: bool) -> None:
        self.write_checked(self.check_values(ids, values, update_time), add)

    def _write_rows(self, ids, values, update_time: int, add: bool) -> None:
        if not len(ids):
            return
        with _threads_for(values.size), self._lock.write():
            got = self._claim(ids, values, last_wins=not add, init_values=add)
            try:
                H.scatter_rows(self._store.values, got.rows, got.values, add)
            finally:
                self._touch(got.rows, update_time)

    def assign(self, ids, values, update_time: int = 0) -> None:
        """Set rows (the last value wins for repeated ids); absent ids are created if admitted."""
        self._write(ids, values, update_time, add=False)

    def assign_add(self, ids, values, update_time: int = 0) -> None:
        """Add to rows (repeated ids add up); a created row adds onto its initialised value."""
        self._write(ids, values, update_time, add=True)

    def reinitialize(self, ids, update_time: int = 0) -> np.ndarray:
        """Re-run initializer and optimizer-state init. Status per id: 1 existed, 0 created, -1 not admitted."""
        ids = _as_ids(ids)
        update_time = _as_int(update_time, "update_time", 0)
        st = self._store
        with _threads_for(len(ids) * self.dim), self._lock.write():
            got = self._claim(ids, None, last_wins=False)
            existed = got.rows[(got.rows >= 0) & (got.rows < got.first_new_row)]
            try:
                if len(existed):
                    for seg, c0 in zip(self._cfg.segments, st.offsets):
                        initialize_rows(st.values, c0, seg.dim, existed, st.ids[existed], seg.initializer)
                    st.init_state_rows(existed)
            finally:
                self._touch(got.rows, update_time)
        pos = got.positions
        return np.where(pos < 0, -1, np.where(pos < got.first_new_row, 1, 0)).astype(np.int32)

    def evict_expired(self) -> int:
        """Remove rows whose update time is expire_time_days or more behind the newest update seen."""
        with self._lock.write():
            st = self._store
            expired = expired_mask(st.update_time[:st.size], self._max_update_time, self._cfg.expire_time_days)
            removed = int(expired.sum())
            if removed:
                if self._tracking:
                    self._removed.append(st.ids[:st.size][expired])
                self._layout_version += 1
                st.keep(np.flatnonzero(~expired))
                H.rebuild(self._index, st.ids, st.size)
            return removed

    # ---- online sync: changes out of a training table, sync batches into a serving table
    def track_changes(self) -> None:
        """From now on record which rows updates change and which ids eviction removes, for `take_changes`
        (one byte per row, marked in the pass that stamps update times). Every row present now, and every row
        restored later, counts as changed. Idempotent."""
        with self._lock.write():
            if not self._tracking:
                self._store.changed[:self._store.size] = 1
            self._tracking = True

    def take_changes(self) -> TableChanges:
        """The rows changed since the last call, with their current values, and the ids removed since then
        that are still absent; the table forgets them. A caller that cannot deliver them hands them back with
        `keep_changes`. Holds the read lock: lookups go on, updates wait for the copy."""
        with self._lock.read(), self._changes_lock:
            st = self._store
            rows = np.flatnonzero(st.changed[:st.size])
            ids, values = st.ids[rows], st.values[rows]
            st.changed[rows] = 0
            removed = self._absent(self._removed)
            self._removed = []
        return TableChanges(ids, values, removed)

    def keep_changes(self, ids, removed) -> None:
        """Hand undelivered changes back: `ids` still present count as changed again (their values are read
        afresh at the next `take_changes`), `removed` ids still absent as removed."""
        ids, removed = _as_ids(ids), _as_ids(removed)
        with self._lock.read(), self._changes_lock:
            rows = self._probe(ids)
            self._store.changed[rows[rows >= 0]] = 1
            removed = self._absent([removed])
            if len(removed):
                self._removed.append(removed)

    def _absent(self, parts: list[np.ndarray]) -> np.ndarray:
        """The distinct ids of `parts` that have no row (caller holds a lock)."""
        if not parts:
            return np.empty(0, np.int64)
        ids = np.unique(np.concatenate(parts))
        return ids[self._probe(ids) < 0]

    def check_sync(self, ids, values, removed) -> CheckedSync:
        """Every check `apply_sync` makes, nothing written: ids distinct, rows of this dim and finite."""
        ids, removed = _as_ids(ids), _as_ids(removed)
        values = self._as_rows(values, len(ids), "values")
        if H.has_repeats(ids):
            raise ValueError("a sync batch names an id twice")
        return CheckedSync(self, ids, values, removed)

    def apply_sync(self, batch: CheckedSync) -> None:
        """Remove `batch.removed`, then make `batch.ids` hold exactly `batch.values` (absent ids are created
        whatever the admission filter says: the training shard admitted them), in one hold of the write lock,
        so a lookup sees all of the batch or none of it."""
        if batch.table is not self:
            raise ValueError("apply_sync takes the result of this table's check_sync")
        st = self._store
        with _threads_for(batch.values.size), self._lock.write():
            if len(batch.removed):
                gone = self._probe(batch.removed)
                gone = gone[gone >= 0]
                if len(gone):
                    keep = np.ones(st.size, np.bool_)
                    keep[gone] = False
                    self._layout_version += 1
                    st.keep(np.flatnonzero(keep))
                    H.rebuild(self._index, st.ids, st.size)
            if len(batch.ids):
                rows = self._probe(batch.ids)
                absent = np.flatnonzero(rows < 0)
                if len(absent):
                    rows[absent] = self._insert(batch.ids[absent], init_values=False)
                    st.update_time[rows[absent]] = self._max_update_time
                H.scatter_rows(st.values, rows, batch.values, False)

    # ---- checkpoints
    def save(self, directory: str | os.PathLike, shard=None) -> int:
        """Write a verified checkpoint of the unexpired rows (only ids with floormod(id, K) == k for shard=(k, K)).

        Memory-bounded: rows are copied out one chunk file at a time, each chunk under the read lock, so
        training continues between chunks and every row is saved whole (values, optimizer state and
        timestamp from one instant). Rows created after the save started are left out. If eviction or a
        restore renumbers rows meanwhile, the save starts over holding the lock throughout.
        Returns the number of rows written.
        """
        shard = _as_shard(shard)
        try:
            return self._save(directory, shard, hold_lock=False)
        except _RowsRenumbered:
            log.info("rows were renumbered during the save to %s: saving again under the lock", directory)
        with self._lock.read():
            return self._save(directory, shard, hold_lock=True)

    def _save(self, directory, shard, hold_lock: bool) -> int:
        st = self._store
        with contextlib.nullcontext() if hold_lock else self._lock.read():
            layout_version = self._layout_version
            keep = ~expired_mask(st.update_time[:st.size], self._max_update_time, self._cfg.expire_time_days)
            if shard is not None:
                keep &= np.mod(st.ids[:st.size], shard[1]) == shard[0]
            idx = np.flatnonzero(keep)
            sketch = self._filter.sketch.copy()
            layout = [(name, a.dtype, a.shape[1:]) for name, a in st.arrays().items()]

        def read_rows(lo: int, hi: int) -> dict[str, np.ndarray]:
            with contextlib.nullcontext() if hold_lock else self._lock.read():
                if self._layout_version != layout_version:
                    raise _RowsRenumbered()
                return {name: arr[idx[lo:hi]] for name, arr in st.arrays().items()}

        def final_meta() -> dict:
            return {"config": self.config, "max_update_time": self._max_update_time,
                    "shard": list(shard) if shard else None}

        save_rows(directory, layout, len(idx), read_rows, sketch, final_meta)
        log.info("saved %d rows to %s", len(idx), directory)
        return len(idx)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> EmbeddingTable:
        saved = SavedRows.open(directory)
        try:
            table = cls(TableConfig.from_dict(dict(saved.payload["config"])))
        except (ValueError, TypeError) as exc:
            raise CorruptCheckpointError(f"{directory}: invalid table config in the manifest: {exc}") from exc
        table._ingest(directory, saved, None, clear=True)
        return table

    def restore(self, directory: str | os.PathLike, shard=None, clear: bool = False) -> int:
        """Upsert rows, state, timestamps and admission counts saved in `directory` into this table.

        With shard=(k, K) only ids with floormod(id, K) == k are taken (re-sharding: restore every old
        shard's directory into each new shard). `clear` empties this table first. Returns rows restored.
        """
        shard = _as_shard(shard)
        saved = SavedRows.open(directory)
        mine = {k: v for k, v in self._config_dict.items() if k not in _RESTORE_IGNORED_KEYS}
        theirs = {k: v for k, v in saved.payload["config"].items() if k not in _RESTORE_IGNORED_KEYS}
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ValueError(f"cannot restore {directory}: its table config differs in {diff}: "
                             f"saved {[theirs.get(k) for k in diff]} vs this table {[mine.get(k) for k in diff]}")
        return self._ingest(directory, saved, shard, clear)

    def _ingest(self, directory, saved: SavedRows, shard, clear: bool) -> int:
        """Every check (layout, repeated ids) runs before the table changes; rows then go in one chunk file at a
        time, so a restore needs memory for one chunk beyond the table."""
        st = self._store
        expected = {name: (a.dtype, a.shape[1:]) for name, a in st.arrays().items()}
        if expected != saved.layout:
            raise CorruptCheckpointError(f"{directory}: row arrays {sorted(saved.layout)} do not match the config's "
                                         f"{sorted(expected)}")
        ids = saved.ids()
        if shard is not None:
            ids = ids[np.mod(ids, shard[1]) == shard[0]]
        if H.has_repeats(ids):
            raise CorruptCheckpointError(f"{directory}: repeated ids in the checkpoint")
        with self._lock.write():
            if clear:
                self._layout_version += 1
                st.size = 0
                self._index[:] = 0
                self._max_update_time = 0
            for chunk in saved.chunks():
                if shard is not None:
                    sel = np.flatnonzero(np.mod(chunk["ids"], shard[1]) == shard[0])
                    chunk = {name: a[sel] for name, a in chunk.items()}
                rows = self._probe(np.ascontiguousarray(chunk["ids"]))
                absent = np.flatnonzero(rows < 0)
                if len(absent):
                    rows[absent] = self._insert(chunk["ids"][absent], init_values=False)
                for name, arr in st.arrays().items():
                    arr[rows] = chunk[name]
                if self._tracking:
                    st.changed[rows] = 1
            self._filter.merge(saved.sketch, replace=clear)
            self._max_update_time = max(self._max_update_time, int(saved.payload["max_update_time"]))
        return len(ids)
