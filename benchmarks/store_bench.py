"""Embedding store throughput vs TensorFlow's DenseHashTable + Variable and vs the random-gather limit.

1,000,000 stored ids, dim 16, batches of 65,536 ids drawn Zipf(1.2)-skewed and uniform. For each
operation prints keys/s for ours, the TF peer doing the same work in the same run, and the ratios
ours/peer and ours/limit. The limit is a numba prange gather of random rows of a 1M×16 float32 array
(what memory allows for reading rows at all). Ours and the limit alternate batch by batch; the TF peer
runs the same batches in a pass of its own, because TF's thread pool spins for a while after each call
and slowed whichever kernel ran next. Each figure is the best batch (the machine is
shared: the minimum time is the least noisy estimate).
"lookup" returns a fresh array per call as the TF peer does; "lookup into buffer" reuses one output
array as the gather limit does (and as a server can);
insert is total time over all batches of ids the table has never seen, including growth (TF's variable is
pre-allocated, its hash table grows); for the growing table it also prints how much of that time went into
faulting in fresh memory and at what rate (on a VM the host backs fresh memory on first touch too, so this
rate depends on the machine more than on the store), and the rate of the rest. The growing insert runs
again into memory the first growing table has just released ("re-used memory"): the same work, only the
memory's history differs, which shows how much of the first figure is the VM's first touch.

Run: `python benchmarks/store_bench.py` (also run by `make bench`). Options: --rows, --batch, --reps.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from random_gather import best_times, gather_rows, timed  # noqa: E402

from ps.store import growable_array  # noqa: E402
from ps.store.growable_array import GrowableArray  # noqa: E402
from ps.store.table import EmbeddingTable  # noqa: E402
from services.malloc_tuning import tune_malloc  # noqa: E402

DIM = 16
OPTIMIZERS = {
    "adagrad": {"type": "adagrad", "learning_rate": 0.05, "initial_accumulator_value": 0.1},
    "ftrl": {"type": "ftrl", "learning_rate": 0.05, "l1_regularization_strength": 0.001},
    "adam": {"type": "adam", "learning_rate": 0.001, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-7},
}


def _best_rates(fns, inputs, n_keys) -> list[float]:
    return [n_keys / t for t in best_times(fns, inputs)]


def _batches(kind: str, ids: np.ndarray, batch: int, reps: int, rng) -> list[np.ndarray]:
    out = []
    for _ in range(reps + 1):
        if kind == "uniform":
            pos = rng.integers(0, len(ids), batch)
        else:
            pos = rng.zipf(1.2, batch * 2)
            pos = pos[pos <= len(ids)][:batch] - 1
        out.append(ids[pos])
    return out


class TFPeer:
    """tf.lookup.experimental.DenseHashTable (id → row) + tf.Variable rows, gather/scatter, in tf.functions."""

    def __init__(self, tf, ids: np.ndarray, values: np.ndarray):
        self.tf = tf
        n = len(ids)
        self.table = tf.lookup.experimental.DenseHashTable(tf.int64, tf.int64, default_value=-1, empty_key=-(2 ** 63),
                                                           deleted_key=-(2 ** 63) + 1, initial_num_buckets=1 << 22)
        self.table.insert(tf.constant(ids), tf.range(n, dtype=tf.int64))
        self.var = tf.Variable(values)
        self.slots = [tf.Variable(np.full_like(values, 0.1)), tf.Variable(np.zeros_like(values))]
        self.lookup = tf.function(lambda k: tf.gather(self.var, self.table.lookup(k)))
        self.apply = {"adagrad": tf.function(self._adagrad), "ftrl": tf.function(self._ftrl),
                      "adam": tf.function(self._adam)}

    def _dedup(self, keys, grads):
        tf = self.tf
        uniq, idx = tf.unique(keys)
        g = tf.math.unsorted_segment_sum(grads, idx, tf.shape(uniq)[0])
        return self.table.lookup(uniq), g

    def _adagrad(self, keys, grads):
        rows, g = self._dedup(keys, grads)
        self.tf.raw_ops.ResourceSparseApplyAdagradV2(var=self.var.handle, accum=self.slots[0].handle, lr=0.05,
                                                     epsilon=0.0, grad=g, indices=rows)

    def _ftrl(self, keys, grads):
        rows, g = self._dedup(keys, grads)
        self.tf.raw_ops.ResourceSparseApplyFtrlV2(var=self.var.handle, accum=self.slots[0].handle,
                                                  linear=self.slots[1].handle, grad=g, indices=rows, lr=0.05,
                                                  l1=0.001, l2=0.0, l2_shrinkage=0.0, lr_power=-0.5)

    def _adam(self, keys, grads):
        """Keras-style sparse Adam: gather m, v, compute, scatter back (TF has no sparse Adam kernel)."""
        tf = self.tf
        rows, g = self._dedup(keys, grads)
        m = tf.gather(self.slots[0], rows) * 0.9 + 0.1 * g
        v = tf.gather(self.slots[1], rows) * 0.999 + 0.001 * g * g
        self.slots[0].scatter_nd_update(rows[:, None], m)
        self.slots[1].scatter_nd_update(rows[:, None], v)
        self.var.scatter_nd_sub(rows[:, None], 0.001 * m / (tf.sqrt(v) + 1e-7))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=65_536)
    p.add_argument("--reps", type=int, default=25)
    args = p.parse_args(argv)
    tune_malloc()  # as `monolith ps` does: per-call scratch arrays are reused heap, not fresh mmaps
    import tensorflow as tf

    rng = np.random.default_rng(0)
    ids = np.unique(rng.integers(-(2 ** 62), 2 ** 62, int(args.rows * 1.01)))[:args.rows]
    rng.shuffle(ids)
    values = rng.normal(0, 0.05, (len(ids), DIM)).astype(np.float32)
    print(f"store_bench: {len(ids):,} ids, dim {DIM}, batches of {args.batch:,}, best of {args.reps} batches")

    tables = {}
    for name, opt in OPTIMIZERS.items():
        t = EmbeddingTable.from_dict({"dim": DIM, "optimizer": opt, "initial_capacity": len(ids)})
        t.assign(ids, values)
        tables[name] = t
    peer = TFPeer(tf, ids, values)
    limit_memory = GrowableArray(values.shape[1:], np.float32, len(values))  # the same kind of memory as the table's
    limit_memory.populate(len(values))
    aligned = limit_memory.array
    aligned[:] = values
    pos_of = {}
    time.sleep(2.0)  # let background work from the setup (TF threads, the kernel collapsing huge pages) settle

    results = []

    def row(label, ours, peer_rate, limit):
        results.append((label, ours, peer_rate, limit))
        peer_s = f"{peer_rate / 1e6:9.2f}" if peer_rate else "        -"
        ratio_p = f"{ours / peer_rate:8.2f}x" if peer_rate else "        -"
        ratio_l = f"{ours / limit:8.2f}" if limit else "       -"
        print(f"{label:26s} {ours / 1e6:9.2f} {peer_s} {ratio_p} {ratio_l}")

    print(f"{'operation (M keys/s)':26s} {'ours':>9s} {'TF peer':>9s} {'ours/peer':>9s} {'ours/limit':>8s}")
    for kind in ("uniform", "zipf"):
        batches = _batches(kind, ids, args.batch, args.reps, rng)
        order = np.argsort(ids)
        pos_of[kind] = [order[np.searchsorted(ids[order], b)] for b in batches]
        grads = [rng.normal(0, 1, (args.batch, DIM)).astype(np.float32) for _ in batches]
        out = np.empty((args.batch, DIM), np.float32)
        inputs = [(b, pos, tf.constant(b), g, tf.constant(g)) for b, pos, g in zip(batches, pos_of[kind], grads)]
        unique_frac = np.mean([len(np.unique(b)) / len(b) for b in batches])
        buf = np.empty((args.batch, DIM), np.float32)
        gather_limit = lambda x, out=out: gather_rows(aligned, x[1], out)  # noqa: E731
        limit, ours = _best_rates([gather_limit, lambda x: tables["adagrad"].lookup(x[0])], inputs, args.batch)
        # A separate pass: right after `lookup` on the same batch it would find the cache warm.
        limit_buf, ours_buf = _best_rates([
            gather_limit, lambda x, buf=buf: tables["adagrad"].lookup(x[0], out=buf)], inputs, args.batch)
        (theirs,) = _best_rates([lambda x: peer.lookup(x[2]).numpy()], inputs, args.batch)
        row(f"gather limit [{kind}]", limit, 0, limit)
        row(f"lookup [{kind}]", ours, theirs, limit)
        row(f"lookup into buffer [{kind}]", ours_buf, theirs, limit_buf)
        for name, t in tables.items():
            (ours,) = _best_rates([lambda x, t=t: t.apply_gradients(x[0], x[3])], inputs, args.batch)
            (theirs,) = _best_rates([lambda x, f=peer.apply[name]: f(x[2], x[4])], inputs, args.batch)
            row(f"apply {name} [{kind}]", ours, theirs, limit)
        print(f"  ({kind}: {unique_frac:.0%} of each batch is unique)")

    new_ids = np.unique(rng.integers(-(2 ** 62), 2 ** 62, args.batch * (args.reps + 1)))
    rng.shuffle(new_ids)
    chunks = [new_ids[i:i + args.batch] for i in range(0, len(new_ids) - args.batch + 1, args.batch)]
    zeros = np.zeros((args.batch, DIM), np.float32)
    tf_zeros = tf.constant(zeros)
    growing: tuple = ()
    reused: tuple = ()
    fresh = None
    for label, capacity in (("insert (growing table)", 16), ("insert (growing, re-used)", 16),
                            ("insert (pre-sized table)", len(new_ids))):
        del fresh  # the last table's memory goes back to the kernel: the re-used row grows into it
        gc.collect()
        fresh = EmbeddingTable.from_dict({"dim": DIM, "optimizer": OPTIMIZERS["adagrad"],
                                          "initial_capacity": capacity})
        fresh.assign(chunks[0], zeros)
        before = growable_array.populate_stats()
        ours_s = sum(timed(lambda b, t=fresh: t.assign(b, zeros), b) for b in chunks[1:])
        faulted = [now - then for now, then in zip(growable_array.populate_stats(), before)]
        ours = (len(chunks) - 1) * args.batch / ours_s
        if "re-used" in label:  # the same work as the growing row: only the memory's history differs
            row(label, ours, 0, 0)
            reused = (ours, ours_s, *faulted)
            continue
        buckets = {} if capacity == 16 else {"initial_num_buckets": 1 << (2 * capacity - 1).bit_length()}
        tf_table = tf.lookup.experimental.DenseHashTable(tf.int64, tf.int64, default_value=-1,
                                                         empty_key=-(2 ** 63), deleted_key=-(2 ** 63) + 1, **buckets)
        tf_var = tf.Variable(np.zeros((len(new_ids), DIM), np.float32))
        counter = [0]

        @tf.function
        def tf_insert(keys, start, tf_table=tf_table, tf_var=tf_var):
            rows = tf.range(start, start + tf.shape(keys, tf.int64)[0], dtype=tf.int64)
            tf_table.insert(keys, rows)
            tf_var.scatter_nd_update(rows[:, None], tf_zeros)

        def tf_insert_batch(b, tf_insert=tf_insert, counter=counter):
            tf_insert(tf.constant(b), tf.constant(counter[0], tf.int64))
            counter[0] += len(b)

        tf_insert_batch(chunks[0])
        theirs = (len(chunks) - 1) * args.batch / sum(timed(tf_insert_batch, b) for b in chunks[1:])
        row(label, ours, theirs, 0)
        if capacity == 16:
            growing = (ours, theirs, ours_s, *faulted)
    ours, theirs, ours_s, fault_bytes, fault_s = growing
    n_new = (len(chunks) - 1) * args.batch
    print(f"  (growing: {fault_s:.2f} of {ours_s:.2f} s went into faulting in {fault_bytes / 2 ** 20:.0f} MiB of fresh "
          f"memory, {fault_bytes / max(fault_s, 1e-9) / 1e9:.2f} GB/s; the rest ran at "
          f"{n_new / max(ours_s - fault_s, 1e-9) / 1e6:.1f} M ids/s)")
    again, again_s, again_bytes, again_fault_s = reused
    rate = again_bytes / max(again_fault_s, 1e-9) / 1e9
    print(f"  (re-used: the same inserts into memory the growing table had just released: {again_fault_s:.2f} of "
          f"{again_s:.2f} s faulting {again_bytes / 2 ** 20:.0f} MiB, {rate:.2f} GB/s: on a VM fresh memory costs "
          f"what the host takes to back it on first touch)")

    lookup_u = next(r for r in results if r[0] == "lookup [uniform]")
    lookup_buf = next(r for r in results if r[0] == "lookup into buffer [uniform]")
    adagrad_u = next(r for r in results if r[0] == "apply adagrad [uniform]")
    print(f"targets (uniform): lookup >= 0.5x limit: {lookup_u[1] / lookup_u[3]:.2f} "
          f"(into a reused buffer like the limit's, measured in its own pass: {lookup_buf[1] / lookup_buf[3]:.2f}), "
          f"lookup >= 5x DenseHashTable: {lookup_u[1] / lookup_u[2]:.1f}x, "
          f"adagrad >= 5x DenseHashTable+scatter: {adagrad_u[1] / adagrad_u[2]:.1f}x, "
          f"growing-table insert >= 10M ids/s: {ours / 1e6:.1f}M ({ours / theirs:.1f}x DenseHashTable's; into re-used "
          f"memory {again / 1e6:.1f}M)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
