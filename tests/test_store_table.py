"""EmbeddingTable behaviour: admission, expiry, growth, concurrency, input checking, lookups, config."""
import threading

import numpy as np
import pytest

from ps.store.table import EmbeddingTable


def _sgd(dim=2, **extra):
    return EmbeddingTable.from_dict({"dim": dim, "optimizer": {"type": "sgd", "learning_rate": 1.0}, **extra})


@pytest.mark.parametrize("threshold", [0, 3, 40])
def test_admission_on_the_threshold_plus_first_occurrence(threshold):
    """Threshold 40 is far above Monolith's 4-bit counters (which would never admit it)."""
    t = _sgd(dim=1, occurrence_threshold=threshold, filter_capacity=1 << 14)
    ids = np.arange(-500, 500, dtype=np.int64) * 7919
    for occurrence in range(1, threshold + 2):
        t.apply_gradients(ids, -np.ones((len(ids), 1)))
        admitted = occurrence > threshold
        assert t.size == (len(ids) if admitted else 0), occurrence
    np.testing.assert_array_equal(t.lookup(ids), np.ones((len(ids), 1)))


def test_admission_counts_repeats_within_one_call_and_lookups_do_not_count():
    t = _sgd(dim=1, occurrence_threshold=3)
    for _ in range(5):
        t.lookup([1, 2])
    t.apply_gradients([1, 1, 1], -np.ones((3, 1)))
    assert t.size == 0
    t.apply_gradients([1, 2], -np.ones((2, 1)))
    np.testing.assert_array_equal(t.lookup([1, 2]), [[1], [0]])
    t.assign([2, 2, 2, 2], np.full((4, 1), 7.0))
    np.testing.assert_array_equal(t.lookup([2]), [[7]])


def test_random_uniform_init_depends_only_on_id_and_is_applied_before_the_update():
    cfg = {"dim": 8, "optimizer": {"type": "sgd", "learning_rate": 1.0},
           "initializer": {"type": "random_uniform", "minval": -0.5, "maxval": 0.5, "seed": 3}}
    a, b = EmbeddingTable.from_dict(cfg), EmbeddingTable.from_dict(cfg)
    ids = np.arange(1000, dtype=np.int64)
    a.apply_gradients(ids, np.zeros((1000, 8)))
    b.apply_gradients(ids[::-1], np.zeros((1000, 8)))
    va = a.lookup(ids)
    np.testing.assert_array_equal(va, b.lookup(ids))
    assert va.min() >= -0.5 and va.max() < 0.5 and abs(va.mean()) < 0.02 and va.std() > 0.25
    c = EmbeddingTable.from_dict({**cfg, "initializer": {**cfg["initializer"], "seed": 4}})
    c.apply_gradients(ids, np.zeros((1000, 8)))
    assert not np.array_equal(va, c.lookup(ids))
    a.apply_gradients([5], np.ones((1, 8)))
    np.testing.assert_allclose(a.lookup([5])[0], va[5] - 1, rtol=1e-6)
    fresh = EmbeddingTable.from_dict(cfg)
    fresh.assign_add([5], np.ones((1, 8)))
    np.testing.assert_allclose(fresh.lookup([5])[0], va[5] + 1, rtol=1e-6)


def test_lookup_never_inserts_and_float16_output():
    t = _sgd(dim=3)
    t.assign([1, 2], [[0.1, 1000.5, -3.25], [1e-3, 2.0, 65504.0]])
    assert t.lookup([3, 4]).tolist() == [[0, 0, 0], [0, 0, 0]] and t.size == 2
    half = t.lookup([1, 2, 3], dtype=np.float16)
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, t.lookup([1, 2, 3]).astype(np.float16))
    assert t.lookup(np.empty(0, np.int64)).shape == (0, 3)
    buf, half_buf = np.full((3, 3), 9, np.float32), np.empty((3, 3), np.float16)
    assert t.lookup([1, 2, 3], out=buf) is buf
    np.testing.assert_array_equal(buf, t.lookup([1, 2, 3]))
    assert t.lookup([1, 2, 3], np.float16, out=half_buf) is half_buf
    np.testing.assert_array_equal(half_buf, half)
    for bad in (np.empty((2, 3), np.float32), np.empty((3, 3), np.float64), np.empty((3, 6), np.float32)[:, ::2]):
        with pytest.raises(ValueError, match="out must be"):
            t.lookup([1, 2, 3], out=bad)


def test_reinitialize_status_and_values():
    t = EmbeddingTable.from_dict({"dim": 2, "optimizer": {"type": "adagrad", "learning_rate": 1.0},
                                  "initializer": {"type": "ones"}})
    t.apply_gradients([1], np.ones((1, 2)))
    assert (t.lookup([1]) != 1).all()
    status = t.reinitialize([2, 1, 1])
    np.testing.assert_array_equal(status, [0, 1, 1])
    np.testing.assert_array_equal(t.lookup([1, 2]), np.ones((2, 2)))
    t.apply_gradients([1, 2], np.ones((2, 2)))
    np.testing.assert_array_equal(t.lookup([1]), t.lookup([2]))
    f = _sgd(occurrence_threshold=2)
    np.testing.assert_array_equal(f.reinitialize([1]), [-1])


def test_expiry_uses_data_time_and_evicts():
    t = _sgd(dim=1, expire_time_days=2)
    day = 86400
    t.assign([1, 2, 3], [[1.0], [2.0], [3.0]], update_time=10 * day)
    t.assign([2], [[2.0]], update_time=11 * day)
    assert t.evict_expired() == 0
    t.apply_gradients([3], [[0.5]], update_time=12 * day)
    assert t.max_update_time == 12 * day
    assert t.evict_expired() == 1
    np.testing.assert_array_equal(t.lookup([1, 2, 3]), [[0], [2], [2.5]])
    t.assign([4], [[4.0]], update_time=13 * day)
    assert t.evict_expired() == 1 and t.size == 2
    np.testing.assert_array_equal(t.lookup([2, 3, 4]), [[0], [2.5], [4]])


def test_growth_past_a_million_rows_while_readers_check_known_rows():
    """Readers running during every resize always see complete, correct rows."""
    t = EmbeddingTable.from_dict({"dim": 2, "optimizer": {"type": "sgd"}, "initial_capacity": 16})
    known = np.arange(-100, 100, dtype=np.int64) * 3_000_009
    known_vals = np.stack([known.astype(np.float32) * 0.5, np.ones(len(known), np.float32)], 1)
    t.assign(known, known_vals)
    stop, errors, reads = threading.Event(), [], [0]

    def reader():
        while not stop.is_set():
            got = t.lookup(known)
            if not np.array_equal(got, known_vals):
                errors.append(got)
            reads[0] += 1

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for th in threads:
        th.start()
    n, batch = 1_100_000, 220_000
    for start in range(0, n, batch):
        ids = np.arange(start, start + batch, dtype=np.int64) * 3 + 1
        t.assign(ids, np.stack([ids.astype(np.float32), -np.ones(batch, np.float32)], 1))
    stop.set()
    for th in threads:
        th.join()
    assert not errors and reads[0] > 0
    assert t.size == n + len(known)
    all_ids = np.arange(n, dtype=np.int64) * 3 + 1
    got = t.lookup(all_ids)
    np.testing.assert_array_equal(got[:, 0], all_ids.astype(np.float32))
    assert (got[:, 1] == -1).all()
    np.testing.assert_array_equal(t.lookup(known), known_vals)
    assert t.memory_bytes > n * (8 + 8 + 8)


def _serial_sgd_sums(work) -> dict[int, np.ndarray]:
    """What SGD(lr=1) from zeros gives, applying every batch one after another."""
    expected: dict[int, np.ndarray] = {}
    for batches in work:
        for ids, g in batches:
            for i, gi in zip(ids.tolist(), g.astype(np.float64)):
                expected[i] = expected.get(i, 0.0) - gi
    return expected


def _serial_adagrad_accumulators(work) -> dict[int, np.ndarray]:
    """Adagrad accumulators (initial 1.0) after every batch, duplicates summed within a batch."""
    squares: dict[int, np.ndarray] = {}
    for batches in work:
        for ids, g in batches:
            uniq, inv = np.unique(ids, return_inverse=True)
            summed = np.zeros((len(uniq), 8))
            np.add.at(summed, inv, g)
            for i, gi in zip(uniq.tolist(), summed):
                squares[i] = squares.get(i, 1.0) + gi ** 2
    return squares


def test_concurrent_sgd_updates_on_overlapping_ids_lose_nothing():
    """4 threads push overlapping ids; with exactly representable grads the result equals the serial sum.

    Batches are big enough (5000 × 8 floats) that every call runs its kernels on the parallel thread pool,
    so concurrent pool launches from several Python threads are exercised too."""
    t = _sgd(dim=8)
    rng = np.random.default_rng(0)
    work = []
    for _ in range(4):
        batches = []
        for _ in range(30):
            ids = rng.integers(-300, 300, 5000)
            batches.append((ids, rng.integers(-8, 9, (5000, 8)).astype(np.float32) / 8))
        work.append(batches)
    ada = EmbeddingTable.from_dict({"dim": 8, "optimizer": {"type": "adagrad", "initial_accumulator_value": 1.0}})
    lookups_ok = []

    def pusher(batches):
        for ids, g in batches:
            t.apply_gradients(ids, g)
            ada.apply_gradients(ids, g)
            lookups_ok.append(np.isfinite(t.lookup(ids[:100])).all())

    threads = [threading.Thread(target=pusher, args=(b,)) for b in work]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    expected = _serial_sgd_sums(work)
    keys = np.array(sorted(expected))
    np.testing.assert_array_equal(t.lookup(keys), np.stack([expected[k] for k in keys.tolist()]))
    assert all(lookups_ok)
    squares = _serial_adagrad_accumulators(work)
    accumulators = ada._store.elem_states[0][0][ada._probe(keys)]
    np.testing.assert_array_equal(accumulators, np.stack([squares[k] for k in keys.tolist()]))


def _snapshot(t, ids):
    return t.lookup(ids).copy(), t.size


@pytest.mark.parametrize("call", [
    lambda t: t.apply_gradients([1, 2], [[np.nan, 0], [0, 0]]),
    lambda t: t.apply_gradients([1, 2], [[np.inf, 0], [0, 0]]),
    lambda t: t.apply_gradients([1, 2], np.array([[1e39, 0], [0, 0]])),
    lambda t: t.apply_gradients([1, 2], np.zeros((3, 2))),
    lambda t: t.apply_gradients([1, 2], np.zeros((2, 3))),
    lambda t: t.apply_gradients([[1, 2]], np.zeros((2, 2))),
    lambda t: t.apply_gradients([1.0, 2.0], np.zeros((2, 2))),
    lambda t: t.apply_gradients([1, 2], np.zeros((2, 2), np.int32)),
    lambda t: t.apply_gradients([1, 2], np.zeros((2, 2)), learning_rates=[0.1, 0.2]),
    lambda t: t.apply_gradients([1, 2], np.zeros((2, 2)), learning_rates=[np.nan]),
    lambda t: t.apply_gradients([1, 2], np.zeros((2, 2)), update_time=-1),
    lambda t: t.assign([1, 2], [[np.nan, 0], [0, 0]]),
    lambda t: t.assign_add([1], [[1.0]]),
    lambda t: t.lookup([1], dtype=np.float64),
    lambda t: t.lookup(np.array([1], np.uint64)),
    lambda t: t.save("/nonexistent-dir/x", shard=(3, 3)),
], ids=["nan", "inf", "f32-overflow", "count", "dim", "2d-ids", "float-ids", "int-grads", "lr-count", "lr-nan",
        "neg-time", "assign-nan", "assign-shape", "dtype", "uint64", "shard"])
def test_bad_input_raises_and_leaves_table_unchanged(call):
    t = _sgd(dim=2)
    t.assign([1, 3], [[1.0, 2.0], [3.0, 4.0]])
    before = _snapshot(t, [1, 2, 3])
    with pytest.raises((ValueError, TypeError)):
        call(t)
    after = _snapshot(t, [1, 2, 3])
    np.testing.assert_array_equal(before[0], after[0])
    assert before[1] == after[1]


@pytest.mark.parametrize("cfg,needle", [
    ({"dim": 2, "optimizer": {"type": "adamw"}}, "adamw"),
    ({"dim": 2, "optimizer": {"type": "sgd", "lr": 0.1}}, "lr"),
    ({"dim": 2, "optimizer": {"type": "sgd"}, "initializer": {"type": "glorot"}}, "glorot"),
    ({"dim": 2, "optimizer": {"type": "sgd"}, "capacity": 5}, "capacity"),
    ({"dim": 0, "optimizer": {"type": "sgd"}}, "dim"),
    ({"dim": 2, "optimizer": {"type": "sgd", "learning_rate": float("nan")}}, "learning_rate"),
    ({"dim": 2, "optimizer": {"type": "adam", "beta1": 1.5}}, "beta1"),
    ({"dim": 2}, "optimizer"),
    ({"dim": 2, "optimizer": {"type": "sgd"}, "occurrence_threshold": 70000}, "occurrence_threshold"),
    ({"dim": 2, "optimizer": {"type": "batch_softmax"}}, "batch_softmax"),
    ({"dim": 3, "segments": [{"dim": 2, "optimizer": {"type": "sgd"}}]}, "dim"),
    ({"dim": 2, "optimizer": {"type": "adagrad", "initial_accumulator_value": 0.0}}, "initial_accumulator_value"),
    ({"dim": 2, "optimizer": {"type": "sgd"}, "initializer": {"type": "random_uniform", "minval": 1, "maxval": 0}},
     "minval"),
])
def test_bad_config_names_the_field(cfg, needle):
    with pytest.raises(ValueError, match=needle):
        EmbeddingTable.from_dict(cfg)


def test_config_is_normalized_json_and_round_trips():
    import json

    a = EmbeddingTable.from_dict({"dim": 4, "optimizer": {"type": "adagrad", "learning_rate": 0.1}})
    b = EmbeddingTable.from_dict({"segments": [{"dim": 4, "optimizer": {"type": "adagrad", "learning_rate": 0.1,
                                                                        "initial_accumulator_value": 0.1}}],
                                  "occurrence_threshold": 0})
    assert a.config == b.config
    assert json.loads(json.dumps(a.config)) == a.config
    assert EmbeddingTable.from_dict(a.config).config == a.config
    c = EmbeddingTable.from_dict({"dim": 4, "optimizer": {"type": "adagrad", "learning_rate": 0.2}})
    assert c.config != a.config
    a.config["segments"][0]["dim"] = 99
    assert a.dim == 4 and a.config["segments"][0]["dim"] == 4


def _unmix64(x: int) -> int:
    """Inverse of ps.kernels.hash_index.mix64 (MurmurHash3's finalizer is a bijection on 64 bits), as a signed id."""
    mask = (1 << 64) - 1
    for mult in (0xC4CEB9FE1A85EC53, 0xFF51AFD7ED558CCD):
        x ^= x >> 33
        x = x * pow(mult, -1, 1 << 64) & mask
    x ^= x >> 33
    return x - (1 << 64) if x >= 1 << 63 else x


def test_ids_sharing_fingerprint_and_home_slot_stay_distinct():
    """Slots keep only a 32-bit fingerprint: ids whose hashes agree in it (and in the home slot) must still
    map to their own rows, and an absent one must not read its twin's row, in every probe path."""
    from ps.kernels.hash_index import mix64

    fp = 0x9E3779B9
    twins = np.array([_unmix64(fp << 32 | k << 28 | 5) for k in range(4)], np.int64)
    hashes = [int(mix64(i)) for i in twins]
    assert len({h >> 32 for h in hashes}) == 1 and len({h & 0xFFFFFFF for h in hashes}) == 1 and len(set(hashes)) == 4
    t = EmbeddingTable.from_dict({"dim": 2, "optimizer": {"type": "sgd", "learning_rate": 1.0}})
    assert len(t._index) < 1 << 28  # so all four share one home slot
    t.assign(twins[:2], np.array([[1, 1], [2, 2]], np.float32))
    np.testing.assert_array_equal(t.lookup(twins), [[1, 1], [2, 2], [0, 0], [0, 0]])
    np.testing.assert_array_equal(t.contains(twins), [True, True, False, False])
    t.apply_gradients(twins[1:3], np.ones((2, 2), np.float32))  # twins[2] is created, then stepped
    batch = np.tile(twins, 5000)  # long enough to run the pipelined kernels on several threads
    np.testing.assert_array_equal(t.lookup(batch)[:4], [[1, 1], [1, 1], [-1, -1], [0, 0]])
    np.testing.assert_array_equal(t.lookup(batch), np.tile(t.lookup(twins), (5000, 1)))
    assert t.size == 3


def test_an_index_beyond_cache_size_probes_alike():
    """An index of more than _DEEP_SLOTS slots is probed with a deeper pipeline: rows, copied values, claims
    and absent ids' probe ends agree with a brute-force answer (twins, extreme ids, absent ids, repeats)."""
    from ps.kernels import hash_index as H

    fp = 0x9E3779B9
    twins = [_unmix64(fp << 32 | k << 28 | 5) for k in range(4)]
    stored = np.unique(np.concatenate([[0, -1, np.iinfo(np.int64).min, np.iinfo(np.int64).max], twins[:2],
                                       np.random.default_rng(3).integers(-2**40, 2**40, 3000)]))
    query = np.random.default_rng(4).choice(np.concatenate([stored, twins[2:], [7 * 2**50, -7 * 2**50]]), 20000)
    want = {int(k): r for r, k in enumerate(stored)}
    expected = np.array([want.get(int(k), -1) for k in query])
    values = np.arange(len(stored), dtype=np.float32)[:, None] + [0, 0.5]
    for slots in (1 << 14, 2 * H._DEEP_SLOTS):
        index = np.zeros(slots, np.uint64)
        H.insert(index, stored, 0)
        rows = np.empty(len(query), np.int64)
        H.probe(index, stored, query, rows)
        np.testing.assert_array_equal(rows, expected)
        out = np.full((len(query), 2), np.nan, np.float32)
        H.lookup_rows(index, stored, values, query, out)
        np.testing.assert_array_equal(out, np.where(expected[:, None] >= 0, values[expected], 0))
        marks, saved, ends = np.zeros(len(stored), np.int64), np.empty(len(query), np.int64), np.empty(len(query),
                                                                                                     np.int64)
        repeated = np.zeros(len(query), np.bool_)
        rows[:] = 0
        repeats, absent = H.claim_rows(index, stored, marks, query, rows, saved, repeated, ends)
        np.testing.assert_array_equal(rows, expected)
        assert absent == (expected < 0).sum() and repeats == (expected >= 0).sum() - len(np.unique(rows[rows >= 0]))
        assert (index[ends[expected < 0]] == 0).all()
        first = {}
        for p, r in enumerate(rows.tolist()):
            first.setdefault(r, p)
        assert all(marks[r] == -2 - p for r, p in first.items() if r >= 0)


def test_rows_beyond_the_slot_format_are_refused_before_allocating():
    from ps.kernels.hash_index import MAX_ROWS

    t = EmbeddingTable.from_dict({"dim": 2, "optimizer": {"type": "sgd", "learning_rate": 1.0}})
    with pytest.raises(ValueError, match="at most 4,294,967,295 rows per shard"):
        t._reserve(MAX_ROWS + 1)
    assert t.size == 0
