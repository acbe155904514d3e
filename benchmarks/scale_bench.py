"""The embedding store at scale: 50M rows of dim 16 + Adagrad state, grown from empty, in one process.

Prints, measured in this run:
- growing-table insert: ids the table has never seen, applied as gradients in batches of 65,536 (the
  streaming case: each creates its row, initialised, then takes one Adagrad step), from an empty table
  to --rows; also how much of that time went into faulting in fresh memory, and at what rate, next to
  the rate at which the machine faulted in the gather's array before (no store code: the ceiling that
  fresh memory alone puts on insertion; on a VM whose host backs guest memory lazily it is low);
- resident bytes per row (the process's RSS growth while the table was built) against the raw bytes of
  a row (id, update time, 16 values, 16 accumulators: what a checkpoint stores per row);
- lookup of uniformly random stored ids against a random-row gather (numba prange) over a separate
  float32 array of the same shape as the table's values ([rows, 16]; the same kind of memory: aligned rows,
  transparent huge pages), filled with random values before the
  table is built (so both have sat in memory as long: on a VM, memory left alone for a while can read slower
  than memory just written); ours and the gather alternate batch by batch and each figure is the best batch
  (the machine is shared; the minimum is the least noisy). Also, as a diagnostic, the same gather over the
  table's own values array (the memory our lookups copy rows from).

About 12 GB at the default 50M rows (the gather's array, then the table). Run:
`python benchmarks/scale_bench.py [--rows N] [--batch B] [--reps R]` (also run by `make bench`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402
from random_gather import best_times, gather_rows  # noqa: E402

from ps.store import growable_array  # noqa: E402
from ps.store.growable_array import GrowableArray  # noqa: E402
from ps.store.table import EmbeddingTable  # noqa: E402
from services.malloc_tuning import tune_malloc  # noqa: E402

DIM = 16
ADAGRAD = {"type": "adagrad", "learning_rate": 0.05, "initial_accumulator_value": 0.1}


@njit(nogil=True, cache=True, parallel=True)
def _distinct_ids(n, seed):
    """n distinct ids spread over all of int64: MurmurHash3's finalizer is a bijection on 64 bits."""
    out = np.empty(n, np.int64)
    for i in prange(n):
        x = np.uint64(i) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xFF51AFD7ED558CCD)
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xC4CEB9FE1A85EC53)
        x ^= x >> np.uint64(33)
        out[i] = np.int64(x)
    return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50_000_000)
    p.add_argument("--batch", type=int, default=65_536)
    p.add_argument("--reps", type=int, default=25)
    args = p.parse_args(argv)
    tune_malloc()
    n, batch = args.rows, args.batch
    ids = _distinct_ids(n, 1)
    grads = np.random.default_rng(0).normal(0, 1, (batch, DIM)).astype(np.float32)
    print(f"scale_bench: {n:,} rows, dim {DIM} + Adagrad, batches of {batch:,}")

    warm = EmbeddingTable.from_dict({"dim": DIM, "optimizer": ADAGRAD})
    warm.apply_gradients(_distinct_ids(batch, 2), grads)  # compile the kernels outside the timing
    warm.lookup(_distinct_ids(batch, 2))
    del warm
    rng = np.random.default_rng(1)
    limit_memory = GrowableArray((DIM,), np.float32, n)  # aligned rows on huge pages, like the table's
    t0 = time.perf_counter()
    limit_memory.populate(n)
    machine_rate = limit_memory.populated_bytes / (time.perf_counter() - t0)  # bytes/s, no store code involved
    limit_values = limit_memory.array
    for start in range(0, n, 1 << 22):
        limit_values[start:start + (1 << 22)] = rng.random((min(n - start, 1 << 22), DIM), np.float32)
    out = np.empty((batch, DIM), np.float32)
    gather_rows(limit_values, np.arange(batch), out)

    rss0 = _rss_bytes()
    populate0 = growable_array.populate_stats()
    table = EmbeddingTable.from_dict({"dim": DIM, "optimizer": ADAGRAD})
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        chunk = ids[start:start + batch]
        table.apply_gradients(chunk, grads[:len(chunk)])
    insert_s = time.perf_counter() - t0
    populated = growable_array.populate_stats()
    fault_bytes, fault_s = populated[0] - populate0[0], populated[1] - populate0[1]
    resident = _rss_bytes() - rss0
    raw = sum(a.dtype.itemsize * int(np.prod(a.shape[1:])) for a in table._store.arrays().values())
    assert table.size == n

    print(f"growing-table insert (new ids as Adagrad gradients): {n / insert_s / 1e6:.2f} M ids/s "
          f"({insert_s:.1f} s for {n:,})")
    print(f"  of which faulting in fresh memory: {fault_s:.1f} s for {fault_bytes / 2**30:.2f} GiB "
          f"({fault_bytes / max(fault_s, 1e-9) / 1e9:.2f} GB/s); the rest runs at "
          f"{n / max(insert_s - fault_s, 1e-9) / 1e6:.2f} M ids/s")
    print(f"  this machine faulted in the gather's {limit_memory.populated_bytes / 2**30:.2f} GiB (no store code) at "
          f"{machine_rate / 1e9:.2f} GB/s: at that rate, {resident / n:.0f} resident bytes per row cap any "
          f"growing insert at {machine_rate / (resident / n) / 1e6:.2f} M ids/s")
    print(f"resident bytes per row: {resident / n:.1f} vs {raw} raw (id, time, values, accumulator): "
          f"{resident / n / raw:.2f}x (target <= 1.3x)")

    pos = [rng.integers(0, n, batch) for _ in range(args.reps + 1)]
    inputs = [(ids[p], p) for p in pos]
    own_values = table._store.values
    ours_t, limit_t, own_t = best_times([lambda x: table.lookup(x[0], out=out),
                                         lambda x: gather_rows(limit_values, x[1], out),
                                         lambda x: gather_rows(own_values, x[1], out)], inputs)
    print(f"lookup of random stored ids: {batch / ours_t / 1e6:.2f} M ids/s; random gather over a "
          f"[{n:,}, {DIM}] float32 array: {batch / limit_t / 1e6:.2f} M rows/s; "
          f"lookup/gather {limit_t / ours_t:.2f} (target >= 0.6)")
    print(f"  (diagnostic: the same gather over the table's own values array: {batch / own_t / 1e6:.2f} M rows/s, "
          f"lookup/that {own_t / ours_t:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
