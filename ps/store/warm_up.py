"""Compile (or load from the numba cache) the store's common kernels before a shard takes calls."""
from __future__ import annotations

import time

import numpy as np

from ps.store.table import EmbeddingTable


def _as_received(ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The arrays as a shard decodes them from a request: read-only views of its bytes. numba compiles
    a kernel separately for read-only arrays, so warming only writable ones leaves every RPC's first
    call to compile (seconds, inside the first training steps)."""
    return (np.frombuffer(ids.astype(np.int64).tobytes(), np.int64),
            np.frombuffer(values.astype(np.float32).tobytes(), np.float32).reshape(values.shape))


def warm_up_kernels() -> float:
    """Run the store's common kernels once (small and parallel paths; writable arrays as local callers pass
    them, read-only ones as RPCs deliver them) so the first RPCs do not pay for numba compilation or cache
    loading (seconds on a fresh clone, where that can exceed client deadlines)."""
    start = time.perf_counter()
    uniform = {"type": "random_uniform", "minval": -0.05, "maxval": 0.05, "seed": 1}
    for optimizer in ({"type": "sgd", "learning_rate": 0.1}, {"type": "adagrad", "learning_rate": 0.1}):
        for initializer in (None, uniform):
            cfg = {"dim": 4, "optimizer": optimizer}
            if initializer is not None:
                cfg["initializer"] = initializer
            for received in (False, True):
                table = EmbeddingTable.from_dict(cfg)
                # numba's kernel thread pool starts on the first large call; after that the same signatures
                # only need a call that makes the table grow
                sizes = (4, 1 << 16) if (initializer, received) == (None, False) else (4, 1 << 11)
                for n in sizes:
                    ids, ones = np.arange(n, dtype=np.int64), np.ones((n, 4), np.float32)
                    if received:
                        ids, ones = _as_received(ids, ones)
                    table.lookup(ids)  # absent rows
                    table.lookup(ids, dtype=np.float16)
                    table.apply_gradients(ids, ones)
                    table.apply_gradients(ids, ones, learning_rates=[0.1])
                    table.assign(ids, ones)
                    table.assign_add(ids, ones)
                    table.lookup(ids)  # present rows
    sgd = {"dim": 4, "optimizer": {"type": "sgd", "learning_rate": 0.1}}
    tracked, synced = EmbeddingTable.from_dict(sgd), EmbeddingTable.from_dict(sgd)  # the online sync's two ends
    tracked.track_changes()
    for n in (4, 1 << 16):
        ids = np.arange(n, dtype=np.int64)
        tracked.apply_gradients(ids, np.ones((n, 4), np.float32))
        changes = tracked.take_changes()
        synced.apply_sync(synced.check_sync(changes.ids, changes.values, ids[:1]))
    return time.perf_counter() - start
