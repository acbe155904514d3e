"""What the online sync costs a training shard: apply_gradients with change tracking on vs off, and the cost
of one sync round's `take_changes`.

Two tables with the same 1,000,000 ids (dim 16, adagrad): the peer does not track changes, ours does (one
byte per row marked in the pass that stamps update times). Batches of 65,536 ids, Zipf(1.2)-skewed and
uniform, alternate between the two tables batch by batch; each figure is the best batch and the median
(the machine is shared). Then `take_changes` after N batches (what one sync round reads: the changed rows'
ids and values) in ms, against the time those N batches took to apply.

Run: `python benchmarks/sync_tracking_bench.py` [--rows, --batch, --reps].
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from ps.store.table import EmbeddingTable  # noqa: E402
from services.malloc_tuning import tune_malloc  # noqa: E402

DIM = 16
CONFIG = {"dim": DIM, "optimizer": {"type": "adagrad", "learning_rate": 0.05, "initial_accumulator_value": 0.1}}


def _batches(kind: str, n_rows: int, batch: int, count: int, rng) -> list[np.ndarray]:
    out = []
    for _ in range(count):
        if kind == "uniform":
            pos = rng.integers(0, n_rows, batch)
        else:
            pos = rng.zipf(1.2, batch * 2)
            pos = pos[pos <= n_rows][:batch] - 1
        out.append(pos.astype(np.int64))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=65_536)
    p.add_argument("--reps", type=int, default=60)
    args = p.parse_args(argv)
    tune_malloc()
    rng = np.random.default_rng(0)
    ids = np.arange(args.rows, dtype=np.int64)
    start = rng.normal(size=(args.rows, DIM)).astype(np.float32)
    peer, ours = EmbeddingTable.from_dict(CONFIG), EmbeddingTable.from_dict(CONFIG)
    for t in (peer, ours):
        t.assign(ids, start)
    ours.track_changes()
    ours.take_changes()
    grads = rng.normal(size=(args.batch, DIM)).astype(np.float32)
    print(f"apply_gradients, {args.rows:,} rows dim {DIM} adagrad, batches of {args.batch:,} ids; keys/s "
          f"(best / median of {args.reps})")
    print(f"{'ids':8} {'untracked (peer)':>22} {'tracked (ours)':>22} {'ours/peer best':>15} {'median':>7}")
    for kind in ("zipf", "uniform"):
        batches = _batches(kind, args.rows, args.batch, args.reps + 1, rng)
        times: dict[str, list[float]] = {"peer": [], "ours": []}
        for k, b in enumerate(batches):
            for name, table in (("peer", peer), ("ours", ours)) if k % 2 else (("ours", ours), ("peer", peer)):
                t0 = time.perf_counter()
                table.apply_gradients(b, grads[:len(b)])
                if k:  # the first batch warms up
                    times[name].append((time.perf_counter() - t0) / len(b))
        best = {n: 1 / min(v) for n, v in times.items()}
        med = {n: 1 / statistics.median(v) for n, v in times.items()}
        print(f"{kind:8} {best['peer'] / 1e6:9.2f}M / {med['peer'] / 1e6:6.2f}M   {best['ours'] / 1e6:9.2f}M / "
              f"{med['ours'] / 1e6:6.2f}M {best['ours'] / best['peer']:15.2f} {med['ours'] / med['peer']:7.2f}")
    print("\ntake_changes after N batches (one sync round), vs applying those N batches")
    for n in (1, 10):
        ours.take_changes()
        batches = _batches("zipf", args.rows, args.batch, n, rng)
        t0 = time.perf_counter()
        for b in batches:
            ours.apply_gradients(b, grads[:len(b)])
        applied = time.perf_counter() - t0
        t0 = time.perf_counter()
        changes = ours.take_changes()
        took = time.perf_counter() - t0
        print(f"{n:3} batches: {len(changes.ids):,} changed rows taken in {took * 1e3:.1f} ms; "
              f"applying them took {applied * 1e3:.1f} ms (take/apply {took / applied:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
