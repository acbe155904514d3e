"""Numba kernels applying one optimizer step to one segment of many rows (pure compute, no policy).

Common arguments: `w` the table's value array [capacity, dim]; `c0`, `d` the segment's column span;
`rows` the row index per unique id (-1 = skip); `g` the summed gradients [n_unique, dim] (same column
layout as `w`). Rows in one call are distinct, so parallel iterations never touch the same row: the
work is split into (row, column-block) items, which also spreads a single wide row (a dense parameter
stored as a 1-row table) over all threads. Scalars arrive as float32 so LLVM keeps float32 lanes.
Formulas follow TensorFlow's ResourceSparseApply* kernels (see ps/optimizers.py for the deviations
from Monolith that we chose).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

_OPTS = dict(nogil=True, cache=True, error_model="numpy", parallel=True)
BLOCK = 2048


@njit(nogil=True, cache=True, inline="always")
def _span(k, nb, d):
    i = k // nb
    j0 = (k - i * nb) * BLOCK
    return i, j0, min(d, j0 + BLOCK)


@njit(**_OPTS)
def sgd(w, c0, d, rows, g, lr, wd):
    nb = (d + BLOCK - 1) // BLOCK
    for k in prange(rows.shape[0] * nb):
        i, j0, j1 = _span(k, nb, d)
        r = rows[i]
        if r < 0:
            continue
        for j in range(c0 + j0, c0 + j1):
            w[r, j] -= lr * (g[i, j] + wd * w[r, j])


@njit(**_OPTS)
def adagrad(w, c0, d, rows, g, lr, wd, eps, acc):
    nb = (d + BLOCK - 1) // BLOCK
    for k in prange(rows.shape[0] * nb):
        i, j0, j1 = _span(k, nb, d)
        r = rows[i]
        if r < 0:
            continue
        for j in range(j0, j1):
            x = w[r, c0 + j]
            gj = g[i, c0 + j] + wd * x
            a = acc[r, j] + gj * gj
            acc[r, j] = a
            w[r, c0 + j] = x - lr * gj / (np.sqrt(a) + eps)


@njit(**_OPTS)
def ftrl(w, c0, d, rows, g, lr, wd, neg_power, is_sqrt, beta, l1, l2, acc, lin):
    """FTRL-Proximal with textbook sign(z): w = (sign(z)·l1 − z) / ((beta + n^-p)/lr + l2) if |z| > l1."""
    nb = (d + BLOCK - 1) // BLOCK
    for k in prange(rows.shape[0] * nb):
        i, j0, j1 = _span(k, nb, d)
        r = rows[i]
        if r < 0:
            continue
        for j in range(j0, j1):
            x = w[r, c0 + j]
            gj = g[i, c0 + j] + wd * x
            n_old = acc[r, j]
            n_new = n_old + gj * gj
            if is_sqrt:
                p_old = np.sqrt(n_old)
                p_new = np.sqrt(n_new)
            else:
                p_old = n_old ** neg_power
                p_new = n_new ** neg_power
            z = lin[r, j] + gj - (p_new - p_old) / lr * x
            acc[r, j] = n_new
            lin[r, j] = z
            if abs(z) > l1:
                w[r, c0 + j] = (np.sign(z) * l1 - z) / ((beta + p_new) / lr + l2)
            else:
                w[r, c0 + j] = 0.0


@njit(**_OPTS)
def momentum(w, c0, d, rows, g, lr, wd, mu, nesterov, acc):
    """TensorFlow's formulation: accum = mu·accum + g; w -= lr·accum (nesterov: lr·(g + mu·accum))."""
    nb = (d + BLOCK - 1) // BLOCK
    for k in prange(rows.shape[0] * nb):
        i, j0, j1 = _span(k, nb, d)
        r = rows[i]
        if r < 0:
            continue
        for j in range(j0, j1):
            x = w[r, c0 + j]
            gj = g[i, c0 + j] + wd * x
            a = mu * acc[r, j] + gj
            acc[r, j] = a
            if nesterov:
                w[r, c0 + j] = x - lr * (gj + mu * a)
            else:
                w[r, c0 + j] = x - lr * a


@njit(**_OPTS)
def rmsprop(w, c0, d, rows, g, lr, wd, one_minus_rho, mu, eps, centered, ms, mom, mg):
    nb = (d + BLOCK - 1) // BLOCK
    for k in prange(rows.shape[0] * nb):
        i, j0, j1 = _span(k, nb, d)
        r = rows[i]
        if r < 0:
            continue
        for j in range(j0, j1):
            x = w[r, c0 + j]
            gj = g[i, c0 + j] + wd * x
            s = ms[r, j]
            s += (gj * gj - s) * one_minus_rho
            ms[r, j] = s
            denom = s + eps
            if centered:
                m = mg[r, j]
                m += (gj - m) * one_minus_rho
                mg[r, j] = m
                denom -= m * m
            v = mu * mom[r, j] + lr * gj / np.sqrt(denom)
            mom[r, j] = v
            w[r, c0 + j] = x - v


@njit(**_OPTS)
def adadelta(w, c0, d, rows, g, lr, wd, rho, one_minus_rho, eps, acc, acc_upd):
    nb = (d + BLOCK - 1) // BLOCK
    for k in prange(rows.shape[0] * nb):
        i, j0, j1 = _span(k, nb, d)
        r = rows[i]
        if r < 0:
            continue
        for j in range(j0, j1):
            x = w[r, c0 + j]
            gj = g[i, c0 + j] + wd * x
            a = acc[r, j] * rho + gj * gj * one_minus_rho
            acc[r, j] = a
            u = acc_upd[r, j]
            upd = np.sqrt(u + eps) / np.sqrt(a + eps) * gj
            w[r, c0 + j] = x - lr * upd
            acc_upd[r, j] = u * rho + upd * upd * one_minus_rho


@njit(**_OPTS)
def adam(w, c0, d, rows, g, lr, wd, beta1, beta2, eps, nesterov, amsgrad, m, v, vhat, powers):
    """Adam / AMSGrad with per-row bias correction: `powers[r]` holds (beta1^t, beta2^t) of the row's step t."""
    nb = (d + BLOCK - 1) // BLOCK
    one = np.float32(1.0)
    for k in prange(rows.shape[0] * nb):
        i, j0, j1 = _span(k, nb, d)
        r = rows[i]
        if r < 0:
            continue
        lr_t = np.float32(lr * np.sqrt(1.0 - powers[r, 1]) / (1.0 - powers[r, 0]))
        for j in range(j0, j1):
            x = w[r, c0 + j]
            gj = g[i, c0 + j] + wd * x
            mj = m[r, j] + (gj - m[r, j]) * (one - beta1)
            vj = v[r, j] + (gj * gj - v[r, j]) * (one - beta2)
            m[r, j] = mj
            v[r, j] = vj
            if amsgrad:
                vj = max(vhat[r, j], vj)
                vhat[r, j] = vj
            num = mj * beta1 + (one - beta1) * gj if nesterov else mj
            w[r, c0 + j] = x - lr_t * num / (np.sqrt(vj) + eps)
    for i in prange(rows.shape[0]):
        r = rows[i]
        if r >= 0:
            powers[r, 0] *= beta1
            powers[r, 1] *= beta2


@njit(**_OPTS)
def group_adagrad(w, c0, d, rows, g, lr, wd, beta, l2, sums):
    """Group lasso Adagrad: one accumulator per row segment grows by max_i g_i²; the segment shrinks as a group."""
    for i in prange(rows.shape[0]):
        r = rows[i]
        if r < 0:
            continue
        mx = 0.0
        for j in range(d):
            gj = g[i, c0 + j] + wd * w[r, c0 + j]
            mx = max(mx, gj * gj)
        s = sums[r, 0] + mx
        sums[r, 0] = s
        eta = lr / (beta + np.sqrt(s))
        norm2 = 0.0
        for j in range(d):
            x = w[r, c0 + j]
            z = g[i, c0 + j] + wd * x - x / eta
            norm2 += z * z
        norm = np.sqrt(norm2)
        scale = 0.0 if norm <= l2 else -eta * (norm - l2) / norm
        for j in range(d):
            x = w[r, c0 + j]
            z = g[i, c0 + j] + wd * x - x / eta
            w[r, c0 + j] = scale * z


@njit(**_OPTS)
def moving_average(w, c0, d, rows, g, wd, mu):
    """The "gradient" is a target value: w = mu·w + (1 − mu)·target."""
    nb = (d + BLOCK - 1) // BLOCK
    for k in prange(rows.shape[0] * nb):
        i, j0, j1 = _span(k, nb, d)
        r = rows[i]
        if r < 0:
            continue
        for j in range(c0 + j0, c0 + j1):
            x = w[r, j]
            w[r, j] = mu * x + (np.float32(1.0) - mu) * (g[i, j] + wd * x)


@njit(**_OPTS)
def batch_softmax(w, c0, rows, alpha, global_step, last_step):
    """Item-frequency estimator: B = (1 − a)·B + a·(step − last_step); 1/B estimates the item's frequency."""
    for i in prange(rows.shape[0]):
        r = rows[i]
        if r < 0:
            continue
        w[r, c0] = (1.0 - alpha) * w[r, c0] + alpha * (global_step - last_step[r, 0])
        last_step[r, 0] = global_step
