"""Monolith's own C++ optimizer test vectors and hash_table_ops_test values (docs/monolith-reference.md).

Where our semantics match Monolith's the vectors must hold. Not reproduced, on purpose:
- rmsprop/rmspropv2 (Monolith's "+1"-denominator variants): our rmsprop is TensorFlow's (tested vs TF);
- the FTRL signbit(z) L1 quirk (vectors below use λ1 = 0, where both agree);
- the Adam restore bug (β2^t written into β1^t's slot): our restore is exact (test_adam_state_survives_restore);
- Momentum's stored state: TF's accumulator of gradients, not Monolith's −lr-scaled velocity (weights agree);
- the DC decorator and group_ftrl (not constructible in Monolith either).
"""
import numpy as np
import pytest

from ps.store.table import EmbeddingTable


def _table(opt, dim, **extra):
    return EmbeddingTable.from_dict({"dim": dim, "optimizer": opt, **extra})


def _steps(opt, dim, grads, lr=None):
    t = _table(opt, dim)
    out = []
    for g in grads:
        t.apply_gradients([1], np.array([g], np.float32), learning_rates=None if lr is None else [lr])
        out.append(t.lookup([1])[0])
    return out


VECTORS = [
    ("sgd", {"type": "sgd"}, 1, [[1.0]], 0.1, [[-0.1]]),
    ("adagrad", {"type": "adagrad", "initial_accumulator_value": 1.0}, 2, [[1, 2]], 0.1,
     [[-0.07071067, -0.08944272]]),
    ("adagrad_wd", {"type": "adagrad", "initial_accumulator_value": 1.0, "weight_decay_factor": 0.1}, 2,
     [[1, 2], [1, 2]], 0.1, [[-0.07071067, -0.08944272], [-0.128173, -0.155943]]),
    ("ftrl_d1", {"type": "ftrl"}, 1, [[10], [10]], 0.01, [[-0.009995], [-0.0170643]]),
    ("ftrl_d2", {"type": "ftrl"}, 2, [[10, 1], [10, 1]], 0.01, [[-0.009995, -0.00953463], [-0.0170643, -0.0164353]]),
    ("adam_d1", {"type": "adam"}, 1, [[10], [10]], 0.01, [[-0.00990099], [-0.01983060]]),
    ("adam_d2", {"type": "adam"}, 2, [[10, 1], [10, 1]], 0.01, [[-0.00990099, -0.00909091],
                                                                [-0.01983060, -0.01842895]]),
    ("amsgrad_d2", {"type": "amsgrad"}, 2, [[10, 1], [10, 1]], 0.01, [[-0.00990099, -0.00909091],
                                                                      [-0.01983060, -0.01842895]]),
    ("momentum", {"type": "momentum"}, 2, [[10, 1], [10, 1]], 0.01, [[-0.1, -0.01], [-0.29, -0.029]]),
    ("adadelta", {"type": "adadelta"}, 2, [[10, 1], [10, 1]], 0.01, [[-0.0031607, -0.0030151],
                                                                     [-0.0064035, -0.0061047]]),
    ("moving_average", {"type": "moving_average"}, 2, [[10, 1], [10, 1]], None, [[1.0, 0.1], [1.9, 0.19]]),
    ("group_adagrad_d1", {"type": "group_adagrad", "l2_regularization_strength": 1.0, "beta": 1.0,
                          "initial_accumulator_value": 0.0}, 1, [[10], [10]], 0.01, [[-0.008182], [-0.014125]]),
    ("group_adagrad_d2", {"type": "group_adagrad", "l2_regularization_strength": 0.5, "beta": 1.0,
      "initial_accumulator_value": 0.0}, 2,
     [[10, 1], [1, 5]], 0.01, [[-0.008639, -0.000864], [-0.009096, -0.004778]]),
    ("group_adagrad_l2_0", {"type": "group_adagrad", "l2_regularization_strength": 0.0, "beta": 1.0,
      "initial_accumulator_value": 0.0}, 2,
     [[10, 1]], 0.01, [[-0.009091, -0.000909]]),
    ("group_adagrad_l2_1000", {"type": "group_adagrad", "l2_regularization_strength": 1000.0, "beta": 1.0,
      "initial_accumulator_value": 0.0}, 2,
     [[10, 1]], 0.01, [[0.0, 0.0]]),
]


@pytest.mark.parametrize("name,opt,dim,grads,lr,expected", VECTORS, ids=[v[0] for v in VECTORS])
def test_monolith_cpp_optimizer_vector(name, opt, dim, grads, lr, expected):
    got = _steps(opt, dim, grads, lr)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-6)


def test_monolith_batch_softmax_vector():
    t = _table({"type": "batch_softmax"}, 1)
    t.apply_gradients([1], np.zeros((1, 1)), global_step=1, learning_rates=[0.1])
    np.testing.assert_allclose(t.lookup([1]), [[0.1]], rtol=1e-6)


def test_monolith_combined_segments_vector_and_restore(tmp_path):
    """Adagrad(d1, init 1) + Adagrad(d2, init 2), lr (1, 2). Monolith's second vector restores only the
    optimizer dump into a fresh (zero) entry; we restore the whole row, so the second step adds onto step 1."""
    t = EmbeddingTable.from_dict({"segments": [
        {"dim": 1, "optimizer": {"type": "adagrad", "initial_accumulator_value": 1.0}},
        {"dim": 2, "optimizer": {"type": "adagrad", "initial_accumulator_value": 2.0}}]})
    g = np.array([[1, 2, 3]], np.float32)
    t.apply_gradients([9], g, learning_rates=[1.0, 2.0])
    step1 = t.lookup([9])[0]
    np.testing.assert_allclose(step1, [-0.70710677, -1.6329931, -1.8090681], rtol=1e-6)
    t.save(tmp_path / "ckpt")
    restored = EmbeddingTable.load(tmp_path / "ckpt")
    restored.apply_gradients([9], g, learning_rates=[1.0, 2.0])
    np.testing.assert_allclose(restored.lookup([9])[0] - step1, [-0.57735026, -1.264911, -1.3416407], rtol=1e-5)


def _sgd_table(dim=1, lr=1.0, **extra):
    return EmbeddingTable.from_dict({"dim": dim, "optimizer": {"type": "sgd", "learning_rate": lr}, **extra})


def test_hash_table_ops_basic_assign_and_lookup():
    t = _sgd_table()
    t.assign_add([0, 1], np.ones((2, 1)))
    np.testing.assert_array_equal(t.lookup([0, 1, 2]), [[1], [1], [0]])
    assert t.size == 2
    t = _sgd_table()
    t.assign([0, 1], np.ones((2, 1)))
    np.testing.assert_array_equal(t.lookup([0, 1, 2]), [[1], [1], [0]])
    t.assign([1], [[5.0]])
    np.testing.assert_array_equal(t.lookup([0, 1, 2]), [[1], [5], [0]])


def test_hash_table_ops_gradients_and_dedup():
    t = _sgd_table(lr=0.1)
    t.apply_gradients([0, 0, 1], -np.ones((3, 1)))
    np.testing.assert_allclose(t.lookup([0, 1]), [[0.2], [0.1]], rtol=1e-6)
    t = _sgd_table(dim=10, lr=0.1)
    t.apply_gradients([0, 1, 0, 1, 0], -np.ones((5, 10)))
    np.testing.assert_allclose(t.lookup([0, 1]), [[0.3] * 10, [0.2] * 10], rtol=1e-6)


def test_hash_table_ops_hash_filter_threshold_3():
    """Monolith feeds ids [0, 0, 1] without dedup, i.e. one occurrence at a time: same as our calls below."""
    t = _sgd_table(lr=0.1, occurrence_threshold=3)
    expected = [[[0], [0]], [[0.1], [0]], [[0.3], [0]], [[0.5], [0.1]]]
    for want in expected:
        t.apply_gradients([0, 1], -np.ones((2, 1)))
        t.apply_gradients([0], -np.ones((1, 1)))
        np.testing.assert_allclose(t.lookup([0, 1]), want, rtol=1e-6)


def test_hash_table_ops_ttl(tmp_path):
    max_ts = 10_000_000
    for op in ("assign_add", "apply_gradients"):
        t = _sgd_table(expire_time_days=1)
        for i, ts in ((1, max_ts - 86401), (2, max_ts - 86399), (3, max_ts)):
            getattr(t, op)([i], [[float(i)]], update_time=ts)
        t.save(tmp_path / op)
        sign = 1 if op == "assign_add" else -1
        np.testing.assert_array_equal(EmbeddingTable.load(tmp_path / op).lookup([1, 2, 3]), [[0], [2 * sign],
                                                                                             [3 * sign]])
    t = _sgd_table(expire_time_days=0)
    t.assign_add([1, 2], [[1.0], [2.0]], update_time=0)
    t.save(tmp_path / "zero")
    np.testing.assert_array_equal(EmbeddingTable.load(tmp_path / "zero").lookup([1, 2]), [[0], [0]])
    t = _sgd_table(expire_time_days=3600)
    t.assign_add([1, 2], [[1.0], [2.0]], update_time=100)
    t.save(tmp_path / "long")
    np.testing.assert_array_equal(EmbeddingTable.load(tmp_path / "long").lookup([1, 2]), [[1], [2]])


def test_hash_table_ops_save_restore_negative_ids_and_clear(tmp_path):
    t = _sgd_table()
    t.assign_add([-1, 1], [[1.0], [2.0]])
    t.save(tmp_path / "a")
    np.testing.assert_array_equal(EmbeddingTable.load(tmp_path / "a").lookup([-1, 1]), [[1], [2]])
    t.assign_add([-1], [[-1.0]])
    t.assign([5], [[1.0]])
    t.restore(tmp_path / "a", clear=True)
    np.testing.assert_array_equal(t.lookup([-1, 1, 5]), [[1], [2], [0]])
