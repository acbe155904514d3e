"""Compile (or load from the numba cache) the store's common kernels before a shard takes calls."""
from __future__ import annotations

import time

import numpy as np

from ps.store.table import EmbeddingTable


def warm_up_kernels() -> float:
    """Run the store's common kernels once (small and parallel paths) so the first RPCs do not pay for
    numba compilation or cache loading (seconds on a fresh clone, where that can exceed client deadlines)."""
    start = time.perf_counter()
    for optimizer in ({"type": "sgd", "learning_rate": 0.1}, {"type": "adagrad", "learning_rate": 0.1}):
        table = EmbeddingTable.from_dict({"dim": 4, "optimizer": optimizer})
        for n in (4, 1 << 16):
            ids = np.arange(n, dtype=np.int64)
            ones = np.ones((n, 4), np.float32)
            table.apply_gradients(ids, ones)
            table.assign(ids, ones)
            table.assign_add(ids, ones)
            table.lookup(ids)
            table.lookup(ids, dtype=np.float16)
    sgd = {"dim": 4, "optimizer": {"type": "sgd", "learning_rate": 0.1}}
    tracked, synced = EmbeddingTable.from_dict(sgd), EmbeddingTable.from_dict(sgd)  # the online sync's two ends
    tracked.track_changes()
    for n in (4, 1 << 16):
        ids = np.arange(n, dtype=np.int64)
        tracked.apply_gradients(ids, np.ones((n, 4), np.float32))
        changes = tracked.take_changes()
        synced.apply_sync(synced.check_sync(changes.ids, changes.values, ids[:1]))
    return time.perf_counter() - start
