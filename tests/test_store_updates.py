"""How an update finds its rows: one claiming probe that notices repeated ids (no separate dedupe pass),
repeats summed exactly in input order, and nothing left behind when an update fails."""
import numpy as np
import pytest

import ps.store.table
from ps.store.table import EmbeddingTable


def _sgd(dim=3, **extra):
    return EmbeddingTable.from_dict({"dim": dim, "optimizer": {"type": "sgd", "learning_rate": 1.0},
                                     "initializer": {"type": "zeros"}, **extra})


def _summed_in_input_order(ids, values):
    """float32 sums per distinct id, added one occurrence at a time in input order (np.add.at is unbuffered)."""
    uniq, inv = np.unique(ids, return_inverse=True)
    out = np.zeros((len(uniq), values.shape[1]), np.float32)
    np.add.at(out, inv, values)
    return uniq, out


def _batch(rng, n, pool, dim=3):
    """Ids drawn with heavy repeats from `pool`, spread over the whole batch (so the parallel probe's chunks and
    threads meet the same rows), and gradients whose float32 sums depend on the order of addition."""
    ids = pool[rng.zipf(1.3, n) % len(pool)]
    grads = (rng.normal(0, 1, (n, dim)) * 10.0 ** rng.integers(-6, 6, (n, 1))).astype(np.float32)
    return ids, grads


def test_repeated_ids_are_summed_exactly_in_input_order_for_new_and_existing_rows():
    rng = np.random.default_rng(0)
    pool = rng.integers(-2 ** 62, 2 ** 62, 3000)
    t = _sgd()
    expected = {}
    for step in range(4):  # the first call creates rows; later ones mix existing and new ids
        ids, grads = _batch(rng, 70_000, pool[: 1000 * (step + 1)])
        uniq, sums = _summed_in_input_order(ids, grads)
        for i, s in zip(uniq.tolist(), sums):
            expected[i] = expected.get(i, np.zeros(3, np.float32)) - s
        t.apply_gradients(ids, grads)
    keys = np.array(sorted(expected))
    np.testing.assert_array_equal(t.lookup(keys), np.stack([expected[k] for k in keys.tolist()]))
    assert t.size == len(keys)


def test_assign_keeps_the_last_value_and_assign_add_sums_repeats():
    rng = np.random.default_rng(1)
    ids, values = _batch(rng, 50_000, np.arange(500, dtype=np.int64) * 1_000_003)
    t = _sgd()
    t.assign(ids, values)
    last = {i: v for i, v in zip(ids.tolist(), values)}
    keys = np.array(sorted(last))
    np.testing.assert_array_equal(t.lookup(keys), np.stack([last[k] for k in keys.tolist()]))
    t.assign_add(ids, values)
    uniq, sums = _summed_in_input_order(ids, values)
    np.testing.assert_array_equal(t.lookup(uniq), np.stack([last[k] for k in uniq.tolist()]) + sums)


class _PassCounter:
    """Stands in for ps.kernels.hash_index inside ps.store.table; records every kernel handed the input ids."""

    def __init__(self, module, ids):
        self._module, self._ids, self.passes = module, ids, []

    def __getattr__(self, name):
        fn = getattr(self._module, name)
        if not callable(fn):
            return fn

        def counted(*args, **kwargs):
            if any(a is self._ids for a in args):
                self.passes.append(name)
            return fn(*args, **kwargs)
        return counted


@pytest.mark.parametrize("new_ids", [False, True])
def test_an_update_hashes_its_ids_once_without_a_dedupe_pass(monkeypatch, new_ids):
    """The probe that finds the rows is the only pass over the ids (plus inserting the ones it did not find):
    repeats are noticed there, not in a dedupe pass of their own, and still summed exactly."""
    t = _sgd()
    known = np.arange(1, 201, dtype=np.int64) * 7
    t.assign(known, np.ones((len(known), 3), np.float32))
    ids = np.tile(known, 50)
    if new_ids:
        ids = np.concatenate([ids, np.repeat(np.arange(1, 101, dtype=np.int64) * -11, 3)])
    grads = np.random.default_rng(2).normal(0, 1, (len(ids), 3)).astype(np.float32)
    counter = _PassCounter(ps.store.table.H, ids)
    monkeypatch.setattr(ps.store.table, "H", counter)
    t.apply_gradients(ids, grads)
    assert counter.passes == (["claim_rows", "insert_absent"] if new_ids else ["claim_rows"])
    monkeypatch.undo()
    uniq, sums = _summed_in_input_order(ids, grads)
    before = np.where(np.isin(uniq, known)[:, None], 1.0, 0.0).astype(np.float32)
    np.testing.assert_array_equal(t.lookup(uniq), before - sums)


def _state(t, ids):
    rows = t._probe(np.asarray(ids, np.int64))
    return t.lookup(ids).copy(), t.size, t._store.update_time[rows[rows >= 0]].copy(), t.contains(ids).copy()


def _assert_same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_an_overflowing_sum_of_repeats_changes_nothing():
    t = _sgd()
    t.assign([1, 2], np.ones((2, 3), np.float32), update_time=5)
    before = _state(t, [1, 2, 3])
    huge = np.full((4, 3), 3e38, np.float32)
    with pytest.raises(ValueError, match="overflowed float32"):
        t.apply_gradients([3, 1, 1, 3], huge, update_time=9)  # 3 is new: its row must go again
    _assert_same(before, _state(t, [1, 2, 3]))
    t.apply_gradients([3, 1, 1], np.ones((3, 3), np.float32), update_time=9)
    np.testing.assert_array_equal(t.lookup([1, 2, 3]), [[-1] * 3, [1] * 3, [-1] * 3])
    np.testing.assert_array_equal(t._store.update_time[t._probe(np.array([1, 2, 3]))], [9, 5, 9])


def test_a_failure_after_the_probe_releases_its_claims_and_inserts(monkeypatch):
    t = _sgd()
    t.assign(np.arange(10), np.ones((10, 3), np.float32), update_time=4)
    before = _state(t, np.arange(20))

    def no_memory(needed):
        raise MemoryError("no room")

    monkeypatch.setattr(t, "_reserve", no_memory)
    with pytest.raises(MemoryError):
        t.apply_gradients(np.array([3, 15, 3, 16, 2]), np.ones((5, 3), np.float32), update_time=8)
    _assert_same(before, _state(t, np.arange(20)))
    monkeypatch.undo()
    t.apply_gradients(np.array([3, 15, 3, 16, 2]), np.ones((5, 3), np.float32), update_time=8)
    assert t.size == 12
    np.testing.assert_array_equal(t.lookup([3, 15, 2, 4]), [[-1] * 3, [-1] * 3, [0] * 3, [1] * 3])


def test_admission_inside_one_update_with_repeats_keeps_only_admitted_rows():
    """Ids seen often enough in this call get rows (numbered in first-seen order), the others are taken out of
    the index again; counts carry over to the next call."""
    t = _sgd(dim=1, occurrence_threshold=2)
    ids = np.array([5, 6, 5, 7, 5, 6, 8, 6, 9])  # 5 and 6 three times: admitted; 7, 8, 9 once: not
    t.apply_gradients(ids, np.ones((len(ids), 1), np.float32))
    assert t.size == 2
    np.testing.assert_array_equal(t._store.ids[:2], [5, 6])
    np.testing.assert_array_equal(t.contains([5, 6, 7, 8, 9]), [True, True, False, False, False])
    np.testing.assert_array_equal(t.lookup([5, 6]), [[-3], [-3]])
    t.apply_gradients([7, 7, 9], np.ones((3, 1), np.float32))  # 7 reaches 3 occurrences, 9 only 2
    np.testing.assert_array_equal(t.contains([7, 9]), [True, False])
    np.testing.assert_array_equal(t.lookup([7]), [[-2]])
    status = t.reinitialize([5, 9, 9, 9, 10])
    np.testing.assert_array_equal(status, [1, 0, 0, 0, -1])


def test_claims_never_outlive_the_update():
    """Rows an update touched carry its update_time afterwards; rows it did not touch keep theirs."""
    t = _sgd(dim=2)
    t.assign(np.arange(100), np.zeros((100, 2), np.float32), update_time=3)
    ids = np.concatenate([np.arange(0, 100, 2)] * 300 + [np.arange(100, 120)])
    t.apply_gradients(ids, np.ones((len(ids), 2), np.float32), update_time=7)
    times = t._store.update_time[:t.size]
    rows = t._probe(np.arange(120))
    np.testing.assert_array_equal(times[rows], np.where((np.arange(120) % 2 == 0) | (np.arange(120) >= 100), 7, 3))
    assert t.evict_expired() == 0
