"""Every optimizer against an independent reference over several steps with duplicate ids.

References: TensorFlow's own `tf.raw_ops.ResourceSparseApply*` kernels on a `tf.Variable` (fed the
de-duplicated, summed gradients, as TF optimizers do for IndexedSlices), `ResourceApplyAdam` on one dense
variable per row (per-row bias correction), and closed-form numpy where TF has no kernel.
Weight decay is fed to the references as g + wd·w computed from the reference's own current weights.
"""
import numpy as np
import pytest
import tensorflow as tf

from ps.store.table import EmbeddingTable

DIM = 4
INIT = 0.05
STEPS = [
    np.array([3, -7, 3, 1 << 40, 3]),
    np.array([-7, 12, 12, 3]),
    np.array([5, -7, 1 << 40, 5, 5, 12]),
    np.array([3, 5]),
]


def _grads(seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1.5, (len(ids), DIM)).astype(np.float32) for ids in STEPS]


ALL_IDS = np.unique(np.concatenate(STEPS))


def _summed(ids, grads):
    """np.unique + np.add.at: dedup written differently from the store's hash-based kernel."""
    uniq, inv = np.unique(ids, return_inverse=True)
    out = np.zeros((len(uniq), grads.shape[1]), np.float32)
    np.add.at(out, inv, grads)
    return uniq, out


def _run_table(opt, grads, lrs=None, wd=0.0):
    t = EmbeddingTable.from_dict({"dim": DIM, "initializer": {"type": "constant", "value": INIT},
                                  "optimizer": {**opt, "weight_decay_factor": wd}})
    for k, (ids, g) in enumerate(zip(STEPS, grads)):
        t.apply_gradients(ids, g, learning_rates=None if lrs is None else [lrs[k]])
    return t.lookup(ALL_IDS)


def _tf_sparse(apply, slots, grads, wd=0.0):
    """Run `apply(var, slot_vars, grad, indices, step)` once per step on a TF variable holding ALL_IDS."""
    var = tf.Variable(np.full((len(ALL_IDS), DIM), INIT, np.float32))
    slot_vars = [tf.Variable(np.full((len(ALL_IDS), DIM), v, np.float32)) for v in slots]
    for k, (ids, g) in enumerate(zip(STEPS, grads)):
        uniq, gsum = _summed(ids, g)
        idx = np.searchsorted(ALL_IDS, uniq)
        gsum = gsum + wd * var.numpy()[idx]
        apply(var, slot_vars, tf.constant(gsum), tf.constant(idx, tf.int64), k)
    return var.numpy()


LRS = [0.1, 0.05, 0.2, 0.07]


def test_sgd_matches_tf_proximal_gradient_descent():
    grads = _grads(1)
    ours = _run_table({"type": "sgd", "learning_rate": 0.3}, grads, lrs=LRS, wd=0.01)
    ref = _tf_sparse(lambda v, s, g, i, k: tf.raw_ops.ResourceSparseApplyProximalGradientDescent(
        var=v.handle, alpha=LRS[k], l1=0.0, l2=0.0, grad=g, indices=i), [], grads, wd=0.01)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_adagrad_matches_tf_adagrad_v2(eps):
    grads = _grads(2)
    opt = {"type": "adagrad", "learning_rate": 0.2, "initial_accumulator_value": 0.3, "epsilon": eps}
    ours = _run_table(opt, grads, wd=0.05)
    ref = _tf_sparse(lambda v, s, g, i, k: tf.raw_ops.ResourceSparseApplyAdagradV2(
        var=v.handle, accum=s[0].handle, lr=0.2, epsilon=eps, grad=g, indices=i), [0.3], grads, wd=0.05)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("power", [-0.5, -0.3])
def test_ftrl_matches_tf_ftrl_v2_with_textbook_l1_sign(power):
    """λ1 > 0 exercises sign(z): Monolith's signbit(z) quirk (ps/store/optimizers.py) is deliberately NOT reproduced.

    Our l2_regularization_strength λ2 is the paper's (β + √n + lr·λ2 denominator) = TF's l2 × 2.
    """
    grads = _grads(3)
    opt = {"type": "ftrl", "learning_rate": 0.5, "learning_rate_power": power, "initial_accumulator_value": 0.2,
           "l1_regularization_strength": 1.0, "l2_regularization_strength": 0.4}
    ours = _run_table(opt, grads, lrs=LRS)
    ref = _tf_sparse(lambda v, s, g, i, k: tf.raw_ops.ResourceSparseApplyFtrlV2(
        var=v.handle, accum=s[0].handle, linear=s[1].handle, grad=g, indices=i, lr=LRS[k], l1=1.0, l2=0.2,
        l2_shrinkage=0.0, lr_power=power), [0.2, 0.0], grads)
    np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=1e-6)
    assert (ours == 0).any() and (ours != 0).any()


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_matches_tf_momentum(nesterov):
    """TF's accumulator formulation (accum = μ·accum + g; w −= lr·accum), including a changing lr."""
    grads = _grads(4)
    opt = {"type": "momentum", "learning_rate": 0.1, "momentum": 0.8, "use_nesterov": nesterov}
    ours = _run_table(opt, grads, lrs=LRS, wd=0.02)
    ref = _tf_sparse(lambda v, s, g, i, k: tf.raw_ops.ResourceSparseApplyMomentum(
        var=v.handle, accum=s[0].handle, lr=LRS[k], grad=g, indices=i, momentum=0.8, use_nesterov=nesterov),
        [0.0], grads, wd=0.02)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("centered", [False, True])
def test_rmsprop_matches_tf_rmsprop(centered):
    grads = _grads(5)
    opt = {"type": "rmsprop", "learning_rate": 0.01, "rho": 0.8, "momentum": 0.5, "epsilon": 1e-3,
           "centered": centered}
    ours = _run_table(opt, grads)
    if centered:
        apply = lambda v, s, g, i, k: tf.raw_ops.ResourceSparseApplyCenteredRMSProp(
            var=v.handle, mg=s[2].handle, ms=s[0].handle, mom=s[1].handle, lr=0.01, rho=0.8, momentum=0.5,
            epsilon=1e-3, grad=g, indices=i)
    else:
        apply = lambda v, s, g, i, k: tf.raw_ops.ResourceSparseApplyRMSProp(
            var=v.handle, ms=s[0].handle, mom=s[1].handle, lr=0.01, rho=0.8, momentum=0.5, epsilon=1e-3, grad=g,
            indices=i)
    ref = _tf_sparse(apply, [0.0, 0.0, 0.0], grads)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)


def test_adadelta_matches_tf_adadelta():
    grads = _grads(6)
    ours = _run_table({"type": "adadelta", "learning_rate": 0.5, "rho": 0.85, "epsilon": 1e-3}, grads, wd=0.1)
    ref = _tf_sparse(lambda v, s, g, i, k: tf.raw_ops.ResourceSparseApplyAdadelta(
        var=v.handle, accum=s[0].handle, accum_update=s[1].handle, lr=0.5, rho=0.85, epsilon=1e-3, grad=g,
        indices=i), [0.0, 0.0], grads, wd=0.1)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("nesterov", [False, True])
def test_adam_matches_tf_apply_adam_with_per_row_step_counts(nesterov):
    """Each row's bias correction uses that row's own update count t (β-powers per row)."""
    grads = _grads(7)
    b1, b2, eps, lr = 0.8, 0.95, 1e-3, 0.05
    opt = {"type": "adam", "learning_rate": lr, "beta1": b1, "beta2": b2, "epsilon": eps, "use_nesterov": nesterov}
    ours = _run_table(opt, grads)
    rows = {i: [tf.Variable(np.full(DIM, init, np.float32)) for init in (INIT, 0.0, 0.0)] for i in ALL_IDS.tolist()}
    t = dict.fromkeys(rows, 0)
    for ids, g in zip(STEPS, grads):
        uniq, gsum = _summed(ids, g)
        for i, gi in zip(uniq.tolist(), gsum):
            t[i] += 1
            var, m, v = rows[i]
            tf.raw_ops.ResourceApplyAdam(var=var.handle, m=m.handle, v=v.handle, beta1_power=b1 ** t[i],
                                         beta2_power=b2 ** t[i], lr=lr, beta1=b1, beta2=b2, epsilon=eps,
                                         grad=tf.constant(gi), use_nesterov=nesterov)
    ref = np.stack([rows[i][0].numpy() for i in ALL_IDS.tolist()])
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)


def test_amsgrad_matches_closed_form():
    grads = _grads(8)
    b1, b2, eps, lr = 0.8, 0.95, 1e-3, 0.05
    ours = _run_table({"type": "amsgrad", "learning_rate": lr, "beta1": b1, "beta2": b2, "epsilon": eps}, grads)
    state = {i: dict(w=np.full(DIM, INIT), m=np.zeros(DIM), v=np.zeros(DIM), vh=np.zeros(DIM), t=0)
             for i in ALL_IDS.tolist()}
    for ids, g in zip(STEPS, grads):
        uniq, gsum = _summed(ids, g)
        for i, gi in zip(uniq.tolist(), gsum.astype(np.float64)):
            s = state[i]
            s["t"] += 1
            s["m"] = b1 * s["m"] + (1 - b1) * gi
            s["v"] = b2 * s["v"] + (1 - b2) * gi ** 2
            s["vh"] = np.maximum(s["vh"], s["v"])
            step = lr * np.sqrt(1 - b2 ** s["t"]) / (1 - b1 ** s["t"])
            s["w"] = s["w"] - step * s["m"] / (np.sqrt(s["vh"]) + eps)
    np.testing.assert_allclose(ours, np.stack([state[i]["w"] for i in ALL_IDS.tolist()]), rtol=1e-5, atol=1e-7)


def test_group_adagrad_matches_closed_form():
    """Group lasso: the row segment is shrunk as a whole, w ← (1 − λ2/‖z‖)·(w − η·g)."""
    grads = _grads(9)
    lr, beta, l2, init_acc = 0.3, 1.0, 0.2, 0.1
    ours = _run_table({"type": "group_adagrad", "learning_rate": lr, "beta": beta, "l2_regularization_strength": l2,
                       "initial_accumulator_value": init_acc}, grads)
    w = {i: np.full(DIM, INIT) for i in ALL_IDS.tolist()}
    acc = dict.fromkeys(w, init_acc)
    for ids, g in zip(STEPS, grads):
        uniq, gsum = _summed(ids, g)
        for i, gi in zip(uniq.tolist(), gsum.astype(np.float64)):
            acc[i] += np.max(gi ** 2)
            eta = lr / (beta + np.sqrt(acc[i]))
            cand = w[i] - eta * gi
            norm = np.linalg.norm(cand / eta)
            w[i] = np.zeros(DIM) if norm < l2 else (1 - l2 / norm) * cand
    np.testing.assert_allclose(ours, np.stack([w[i] for i in ALL_IDS.tolist()]), rtol=1e-5, atol=1e-7)


def test_moving_average_matches_closed_form():
    grads = _grads(10)
    ours = _run_table({"type": "moving_average", "momentum": 0.7}, grads)
    w = {i: np.full(DIM, INIT) for i in ALL_IDS.tolist()}
    for ids, g in zip(STEPS, grads):
        uniq, gsum = _summed(ids, g)
        for i, gi in zip(uniq.tolist(), gsum.astype(np.float64)):
            w[i] = 0.7 * w[i] + 0.3 * gi
    np.testing.assert_allclose(ours, np.stack([w[i] for i in ALL_IDS.tolist()]), rtol=1e-5, atol=1e-7)


def test_batch_softmax_matches_closed_form_and_estimates_frequency():
    """Monolith hash_table_ops_test: id 0 every 5 steps, id 1 every 10 → 1/max(B, 1) ≈ (0.2, 0.1)."""
    t = EmbeddingTable.from_dict({"dim": 1, "optimizer": {"type": "batch_softmax", "learning_rate": 0.1}})
    b, last = np.zeros(2), np.zeros(2)
    for step in range(1000):
        ids = [i for i, every in ((0, 5), (1, 10)) if step % every == 0]
        if ids:
            t.apply_gradients(np.array(ids), np.zeros((len(ids), 1)), global_step=step)
            for i in ids:
                b[i] = 0.9 * b[i] + 0.1 * (step - last[i])
                last[i] = step
    got = t.lookup([0, 1])[:, 0]
    np.testing.assert_allclose(got, b, rtol=1e-4)
    np.testing.assert_allclose(1 / np.maximum(got, 1), [0.2, 0.1], atol=0.01)


def test_segments_have_independent_optimizers_and_learning_rates():
    grads = _grads(11)
    t = EmbeddingTable.from_dict({"segments": [
        {"dim": 1, "optimizer": {"type": "sgd", "learning_rate": 1.0}},
        {"dim": 3, "optimizer": {"type": "adagrad", "learning_rate": 1.0, "initial_accumulator_value": 0.5}}],
        "initializer": {"type": "constant", "value": INIT}})
    assert t.dim == DIM and t.segment_dims == [1, 3]
    for ids, g in zip(STEPS, grads):
        t.apply_gradients(ids, g, learning_rates=[0.2, 0.1])
    ours = t.lookup(ALL_IDS)
    sgd = _tf_sparse(lambda v, s, g, i, k: tf.raw_ops.ResourceSparseApplyProximalGradientDescent(
        var=v.handle, alpha=0.2, l1=0.0, l2=0.0, grad=g, indices=i), [], grads)
    ada = _tf_sparse(lambda v, s, g, i, k: tf.raw_ops.ResourceSparseApplyAdagradV2(
        var=v.handle, accum=s[0].handle, lr=0.1, epsilon=0.0, grad=g, indices=i), [0.5], grads)
    np.testing.assert_allclose(ours[:, :1], sgd[:, :1], rtol=1e-5)
    np.testing.assert_allclose(ours[:, 1:], ada[:, 1:], rtol=1e-5)


@pytest.mark.parametrize("kind", ["sgd", "adagrad", "ftrl", "momentum", "rmsprop", "adadelta", "adam", "amsgrad",
                                  "group_adagrad", "moving_average"])
def test_wide_single_row_table_matches_narrow_rows(kind):
    """A dense parameter stored as one row of dim 2^20 (split over threads by column blocks) updates each
    column exactly like a narrow table does (group_adagrad couples columns, so it is compared to its own
    closed form on the whole row instead)."""
    dim, narrow = 1 << 20, 64
    rng = np.random.default_rng(12)
    g = rng.normal(size=(2, dim)).astype(np.float32)
    cfg = {"dim": dim, "optimizer": {"type": kind}, "initializer": {"type": "constant", "value": 0.1}}
    wide = EmbeddingTable.from_dict(cfg)
    small = EmbeddingTable.from_dict({**cfg, "dim": narrow})
    for step in range(2):
        wide.apply_gradients([7], g[step:step + 1])
        small.apply_gradients([7], g[step:step + 1, -narrow:])
    w = wide.lookup([7])[0]
    assert np.isfinite(w).all() and wide.size == 1
    assert wide.memory_bytes <= 4 * dim * 4 + (1 << 20), "a 1-row table holds one row of values and state"
    if kind != "group_adagrad":
        np.testing.assert_array_equal(w[-narrow:], small.lookup([7])[0])
    else:
        p = wide.config["segments"][0]["optimizer"]
        x, acc = np.full(dim, 0.1), p["initial_accumulator_value"]
        for step in range(2):
            acc += np.max(g[step].astype(np.float64) ** 2)
            eta = p["learning_rate"] / (p["beta"] + np.sqrt(acc))
            x = x - eta * g[step]
        np.testing.assert_allclose(w, x, rtol=1e-4, atol=1e-6)
