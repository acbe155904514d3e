"""Which shard gets which ids, and putting the shards' rows back in the caller's order.

`route` splits ids by owning shard (deduplicating them first unless the caller already did); `Routed`
remembers the split so a reply's rows can be reassembled. The id work runs in `ps.kernels.routing`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ps.kernels.half_floats import to_float32
from ps.kernels.hash_index import gather
from ps.kernels.routing import partition_by_owner, sum_by_inverse, unique_inverse


def _widened(rows: np.ndarray) -> np.ndarray:
    return to_float32(rows) if rows.dtype == np.float16 else rows


@dataclass
class Routed:
    """ids split by owning shard; `unique[order[bounds[s]:bounds[s+1]]]` go to shard s."""

    unique: np.ndarray
    inverse: np.ndarray | None  # None: ids were not deduplicated (or had no duplicates)
    order: np.ndarray | None    # None: a single shard
    bounds: np.ndarray

    def positions(self, shard: int) -> slice | np.ndarray:
        lo, hi = int(self.bounds[shard]), int(self.bounds[shard + 1])
        return slice(lo, hi) if self.order is None else self.order[lo:hi]

    def count(self, shard: int) -> int:
        return int(self.bounds[shard + 1] - self.bounds[shard])

    def shard_ids(self, shard: int) -> np.ndarray:
        return self.unique[self.positions(shard)]

    def assemble(self, parts: list[tuple[int, np.ndarray]], dim: int) -> np.ndarray:
        """float32 rows in the caller's order from each shard's rows (in `shard_ids` order).

        Each part may be a read-only view of a reply buffer; the result is always a new writable array."""
        n = self.unique.size if self.inverse is None else self.inverse.size
        out = np.empty((n, dim), np.float32)
        if self.order is None:  # one shard: its rows are already in `unique` order
            rows = parts[0][1] if parts else out[:0]
        else:  # scatter each shard's rows to their unique positions (widening float16 on the way)
            rows = out if self.inverse is None else np.empty((self.unique.size, dim), np.float32)
            for shard, got in parts:
                rows[self.positions(shard)] = _widened(got)
            if rows is out:
                return out
        rows = _widened(rows)  # float16 transport: widen the unique rows only
        if self.inverse is None:
            out[...] = rows
        else:
            gather(rows, self.inverse, out)  # reads `rows` in place, even a read-only unaligned reply view
        return out


def route(ids: np.ndarray, num_shards: int, dedupe: bool = True) -> Routed:
    inverse = None
    unique = ids
    if dedupe and ids.size:
        unique, inverse = unique_inverse(ids)
        if unique.size == ids.size:
            unique, inverse = ids, None
    if num_shards == 1:
        return Routed(unique, inverse, None, np.array([0, unique.size], dtype=np.int64))
    order, bounds = partition_by_owner(unique, num_shards)
    return Routed(unique, inverse, order, bounds)


def sum_duplicates(routed: Routed, values: np.ndarray) -> np.ndarray:
    """Per-unique-id sums of `values` rows (the gradient of a gather, as TF's IndexedSlices are summed)."""
    if routed.inverse is None:
        return values
    return sum_by_inverse(values, routed.inverse, routed.unique.size)
