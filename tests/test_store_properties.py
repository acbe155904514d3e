"""Property tests of the embedding store: random sequences of create/lookup/apply/assign/evict/save/load on
an `EmbeddingTable` against a plain-Python model of the same semantics (a dict of rows, occurrence counts
for admission, the optimizers' update rules written out per element), for sgd, adagrad and ftrl, with
duplicate, negative and extreme ids; and a table re-sharded through checkpoints onto another shard count.

Bounded for `make test` (the "ci" profile); `make fuzz` runs the "fuzz" profile, with many more examples.
"""
from __future__ import annotations

import math
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ps.store.table import EmbeddingTable

DIM = 3
DAY = 86400
EXTREME = [0, 1, -1, 2, -2, 7, -7, 2**31, -(2**31) - 1, 2**62 + 3, 2**63 - 1, -(2**63), -(2**63) + 1, 10**12 + 39]
OPTIMIZERS = {
    "sgd": {"type": "sgd", "learning_rate": 0.5},
    "adagrad": {"type": "adagrad", "learning_rate": 0.3, "initial_accumulator_value": 0.1},
    "ftrl": {"type": "ftrl", "learning_rate": 0.2, "initial_accumulator_value": 0.1, "beta": 0.5,
             "l1_regularization_strength": 0.01, "l2_regularization_strength": 0.1},
}


class ModelTable:
    """What a table should hold, in plain Python: row id -> values, optimizer state, update time."""

    def __init__(self, optimizer: dict, threshold: int) -> None:
        self.opt, self.threshold = optimizer, threshold
        self.rows: dict[int, dict] = {}
        self.seen: Counter[int] = Counter()  # occurrences of ids while absent
        self.max_time = 0

    def _admitted(self, ids: list[int]) -> set[int]:
        admitted = set()
        for i, n in Counter(ids).items():
            if i in self.rows:
                admitted.add(i)
                continue
            self.seen[i] += n
            if self.seen[i] > self.threshold:
                acc = self.opt.get("initial_accumulator_value", 0.0)
                self.rows[i] = {"w": np.zeros(DIM, np.float32), "acc": np.full(DIM, acc, np.float32),
                                "lin": np.zeros(DIM, np.float32), "t": 0}
                admitted.add(i)
        return admitted

    def lookup(self, ids: list[int]) -> np.ndarray:
        return np.array([self.rows[i]["w"] if i in self.rows else np.zeros(DIM, np.float32) for i in ids],
                        np.float32).reshape(len(ids), DIM)

    def apply(self, ids: list[int], grads: np.ndarray, t: int) -> None:
        summed: dict[int, np.ndarray] = {}
        for i, g in zip(ids, grads):
            summed[i] = summed.get(i, np.zeros(DIM, np.float32)) + g
        for i in self._admitted(ids):
            row = self.rows[i]
            for j in range(DIM):
                self._step(row, j, float(summed[i][j]))
            row["t"] = t
        self.max_time = max(self.max_time, t)

    def _step(self, row: dict, j: int, g: float) -> None:
        o, w = self.opt, float(row["w"][j])
        if o["type"] == "sgd":
            w -= o["learning_rate"] * g
        elif o["type"] == "adagrad":
            row["acc"][j] += g * g
            w -= o["learning_rate"] * g / math.sqrt(row["acc"][j])
        else:  # FTRL-Proximal (McMahan et al. 2013), learning rate power -1/2
            lr, n = o["learning_rate"], float(row["acc"][j])
            n_new = n + g * g
            z = float(row["lin"][j]) + g - (math.sqrt(n_new) - math.sqrt(n)) / lr * w
            row["acc"][j], row["lin"][j] = n_new, z
            l1, l2 = o["l1_regularization_strength"], o["l2_regularization_strength"]
            w = 0.0 if abs(z) <= l1 else -(z - math.copysign(l1, z)) / ((o["beta"] + math.sqrt(n_new)) / lr + l2)
        row["w"][j] = w

    def assign(self, ids: list[int], values: np.ndarray, t: int) -> None:
        admitted = self._admitted(ids)
        for i, v in zip(ids, values):  # the last value of a repeated id wins
            if i in admitted:
                self.rows[i]["w"] = v.astype(np.float32).copy()
                self.rows[i]["t"] = t
        self.max_time = max(self.max_time, t)

    def evict(self, expire_days: int) -> int:
        old = [i for i, r in self.rows.items() if self.max_time - r["t"] >= expire_days * DAY]
        for i in old:
            del self.rows[i]
        return len(old)


ids_st = st.lists(st.one_of(st.sampled_from(EXTREME), st.integers(-20, 20)), min_size=1, max_size=12)
finite = st.floats(-4, 4, allow_nan=False, width=32)
time_st = st.integers(0, 6).map(lambda half_days: half_days * DAY // 2)


@st.composite
def operations(draw):
    ops = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["apply", "apply", "assign", "lookup", "evict", "save_load"]))
        if kind in ("apply", "assign"):
            ids = draw(ids_st)
            values = np.array(draw(st.lists(finite, min_size=len(ids) * DIM, max_size=len(ids) * DIM)),
                              np.float32).reshape(len(ids), DIM)
            ops.append((kind, ids, values, draw(time_st)))
        elif kind == "lookup":
            ops.append((kind, draw(ids_st)))
        else:
            ops.append((kind,))
    return ops


def _config(optimizer: dict, threshold: int) -> dict:
    return {"dim": DIM, "optimizer": optimizer, "initializer": {"type": "zeros"}, "occurrence_threshold": threshold,
            "expire_time_days": 1, "filter_capacity": 1 << 14, "initial_capacity": 4}


def _check(table: EmbeddingTable, model: ModelTable, ids) -> None:
    ids = sorted(set(ids) | set(model.rows))
    np.testing.assert_allclose(table.lookup(np.array(ids, np.int64)), model.lookup(ids), rtol=2e-4, atol=2e-5)
    assert table.size == len(model.rows)


def _run(table: EmbeddingTable, model: ModelTable, ops, directory: Path) -> EmbeddingTable:
    touched: list[int] = []
    for n, op in enumerate(ops):
        kind = op[0]
        if kind == "apply":
            _, ids, grads, t = op
            table.apply_gradients(np.array(ids, np.int64), grads, update_time=t)
            model.apply(ids, grads, t)
        elif kind == "assign":
            _, ids, values, t = op
            table.assign(np.array(ids, np.int64), values, update_time=t)
            model.assign(ids, values, t)
        elif kind == "lookup":
            np.testing.assert_allclose(table.lookup(np.array(op[1], np.int64)), model.lookup(op[1]),
                                       rtol=2e-4, atol=2e-5)
        elif kind == "evict":
            assert table.evict_expired() == model.evict(1)
        else:  # a checkpoint round trip (which leaves expired rows out): the loaded table carries on
            table.save(directory / f"save-{n}")
            table = EmbeddingTable.load(directory / f"save-{n}")
            model.evict(1)
        touched += op[1] if kind in ("apply", "assign", "lookup") else []
        _check(table, model, touched)
    return table


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@given(ops=operations(), threshold=st.sampled_from([0, 0, 1, 3]))
def test_table_matches_the_plain_python_model(optimizer, ops, threshold):
    model = ModelTable(OPTIMIZERS[optimizer], threshold)
    table = EmbeddingTable.from_dict(_config(OPTIMIZERS[optimizer], threshold))
    with tempfile.TemporaryDirectory() as tmp:
        _run(table, model, ops, Path(tmp))


@given(ops=operations(), old=st.integers(1, 4), new=st.integers(1, 5))
def test_restore_onto_another_shard_count(ops, old, new):
    """Save a table as `old` shard parts, restore every part into each of `new` shards: every id lands on its
    owner (floor modulo) with its row, and the shards together hold exactly the original rows."""
    model = ModelTable(OPTIMIZERS["adagrad"], 0)
    table = EmbeddingTable.from_dict(_config(OPTIMIZERS["adagrad"], 0))
    with tempfile.TemporaryDirectory() as tmp:
        table = _run(table, model, [op for op in ops if op[0] != "save_load"], Path(tmp))
        parts = [Path(tmp) / f"part-{k}-of-{old}" for k in range(old)]
        for k, part in enumerate(parts):
            table.save(part, shard=(k, old))
        shards = [EmbeddingTable.from_dict(_config(OPTIMIZERS["adagrad"], 0)) for _ in range(new)]
        for j, shard in enumerate(shards):
            for part in parts:
                shard.restore(part, shard=(j, new))
    model.evict(1)  # a save leaves expired rows out
    assert sum(s.size for s in shards) == len(model.rows)
    for i, row in model.rows.items():
        owner = shards[i % new]  # Python's % is floor modulo, as the PS routes ids
        np.testing.assert_allclose(owner.lookup(np.array([i], np.int64))[0], row["w"], rtol=2e-4, atol=2e-5)
        assert owner.contains(np.array([i], np.int64))[0]
