"""Numba kernels applying one optimizer step to one segment of many rows (pure compute, no policy).

Common arguments: `w` the table's value array [capacity, dim]; `c0`, `d` the segment's column span;
`rows` the row index per unique id (-1 = skip); `g` the summed gradients [n_unique, dim] (same column
layout as `w`). Rows in one call are distinct, so parallel iterations never touch the same row and need
no locks. Each optimizer is a `_*_row` function over 1-D views of one row (which LLVM vectorizes) and a
driver that runs it over rows in parallel, or, for rows wider than BLOCK (a dense parameter stored as a
1-row table), over (row, column-block) items so one wide row still uses every thread.
Scalars arrive as float32 so LLVM keeps float32 lanes. Formulas follow TensorFlow's
ResourceSparseApply* kernels (see ps/store/optimizers.py for the deviations from Monolith that we chose).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ps.kernels.cache_prefetch import prefetch_rows_ahead

_OPTS = dict(nogil=True, cache=True, error_model="numpy", parallel=True)
_ROW = dict(nogil=True, cache=True, error_model="numpy", inline="always")
BLOCK = 4096


@njit(nogil=True, cache=True, inline="always")
def _span(k, nb, d):
    i = k // nb
    j0 = (k - i * nb) * BLOCK
    return i, j0, min(d, j0 + BLOCK)


@njit(nogil=True, cache=True, inline="always")
def _blocks(d):
    return (d + BLOCK - 1) // BLOCK


@njit(**_ROW)
def _sgd_row(wr, gr, lr, wd):
    for j in range(wr.shape[0]):
        wr[j] -= lr * (gr[j] + wd * wr[j])


@njit(**_OPTS)
def sgd(w, c0, d, rows, g, lr, wd):
    if _blocks(d) == 1:
        for i in prange(rows.shape[0]):
            prefetch_rows_ahead(rows, i, (w,))
            r = rows[i]
            if r >= 0:
                _sgd_row(w[r, c0:c0 + d], g[i, c0:c0 + d], lr, wd)
    else:
        nb = _blocks(d)
        for k in prange(rows.shape[0] * nb):
            i, j0, j1 = _span(k, nb, d)
            r = rows[i]
            if r >= 0:
                _sgd_row(w[r, c0 + j0:c0 + j1], g[i, c0 + j0:c0 + j1], lr, wd)


@njit(**_ROW)
def _adagrad_row(wr, gr, acc, lr, wd, eps):
    for j in range(wr.shape[0]):
        x = wr[j]
        gj = gr[j] + wd * x
        a = acc[j] + gj * gj
        acc[j] = a
        wr[j] = x - lr * gj / (np.sqrt(a) + eps)


@njit(**_OPTS)
def adagrad(w, c0, d, rows, g, lr, wd, eps, acc):
    if _blocks(d) == 1:
        for i in prange(rows.shape[0]):
            prefetch_rows_ahead(rows, i, (w, acc))
            r = rows[i]
            if r >= 0:
                _adagrad_row(w[r, c0:c0 + d], g[i, c0:c0 + d], acc[r], lr, wd, eps)
    else:
        nb = _blocks(d)
        for k in prange(rows.shape[0] * nb):
            i, j0, j1 = _span(k, nb, d)
            r = rows[i]
            if r >= 0:
                _adagrad_row(w[r, c0 + j0:c0 + j1], g[i, c0 + j0:c0 + j1], acc[r, j0:j1], lr, wd, eps)


@njit(**_ROW)
def _ftrl_elem(wr, gr, acc, lin, j, lr, wd, neg_power, is_sqrt, beta, l1, l2):
    x = wr[j]
    gj = gr[j] + wd * x
    n_old = acc[j]
    n_new = n_old + gj * gj
    if is_sqrt:
        p_old = np.sqrt(n_old)
        p_new = np.sqrt(n_new)
    else:
        p_old = n_old ** neg_power
        p_new = n_new ** neg_power
    z = lin[j] + gj - (p_new - p_old) / lr * x
    acc[j] = n_new
    lin[j] = z
    if abs(z) > l1:
        wr[j] = (np.sign(z) * l1 - z) / ((beta + p_new) / lr + l2)
    else:
        wr[j] = 0.0


@njit(**_ROW)
def _ftrl_row(wr, gr, acc, lin, lr, wd, neg_power, is_sqrt, beta, l1, l2):
    """Separate loops for power −0.5 and any other power: a `pow` call anywhere in the loop stops LLVM
    vectorizing it (docs/design-notes.md)."""
    if is_sqrt:
        for j in range(wr.shape[0]):
            _ftrl_elem(wr, gr, acc, lin, j, lr, wd, neg_power, True, beta, l1, l2)
    else:
        for j in range(wr.shape[0]):
            _ftrl_elem(wr, gr, acc, lin, j, lr, wd, neg_power, False, beta, l1, l2)


@njit(**_OPTS)
def ftrl(w, c0, d, rows, g, lr, wd, neg_power, is_sqrt, beta, l1, l2, acc, lin):
    """FTRL-Proximal with textbook sign(z): w = (sign(z)·l1 − z) / ((beta + n^-p)/lr + l2) if |z| > l1."""
    if _blocks(d) == 1:
        for i in prange(rows.shape[0]):
            prefetch_rows_ahead(rows, i, (w, acc, lin))
            r = rows[i]
            if r >= 0:
                _ftrl_row(w[r, c0:c0 + d], g[i, c0:c0 + d], acc[r], lin[r], lr, wd, neg_power, is_sqrt, beta, l1, l2)
    else:
        nb = _blocks(d)
        for k in prange(rows.shape[0] * nb):
            i, j0, j1 = _span(k, nb, d)
            r = rows[i]
            if r >= 0:
                _ftrl_row(w[r, c0 + j0:c0 + j1], g[i, c0 + j0:c0 + j1], acc[r, j0:j1], lin[r, j0:j1], lr, wd,
                          neg_power, is_sqrt, beta, l1, l2)


@njit(**_ROW)
def _momentum_row(wr, gr, acc, lr, wd, mu, nesterov):
    for j in range(wr.shape[0]):
        x = wr[j]
        gj = gr[j] + wd * x
        a = mu * acc[j] + gj
        acc[j] = a
        if nesterov:
            wr[j] = x - lr * (gj + mu * a)
        else:
            wr[j] = x - lr * a


@njit(**_OPTS)
def momentum(w, c0, d, rows, g, lr, wd, mu, nesterov, acc):
    """TensorFlow's formulation: accum = mu·accum + g; w -= lr·accum (nesterov: lr·(g + mu·accum))."""
    if _blocks(d) == 1:
        for i in prange(rows.shape[0]):
            prefetch_rows_ahead(rows, i, (w, acc))
            r = rows[i]
            if r >= 0:
                _momentum_row(w[r, c0:c0 + d], g[i, c0:c0 + d], acc[r], lr, wd, mu, nesterov)
    else:
        nb = _blocks(d)
        for k in prange(rows.shape[0] * nb):
            i, j0, j1 = _span(k, nb, d)
            r = rows[i]
            if r >= 0:
                _momentum_row(w[r, c0 + j0:c0 + j1], g[i, c0 + j0:c0 + j1], acc[r, j0:j1], lr, wd, mu, nesterov)


@njit(**_ROW)
def _rmsprop_row(wr, gr, ms, mom, mg, lr, wd, one_minus_rho, mu, eps, centered):
    for j in range(wr.shape[0]):
        x = wr[j]
        gj = gr[j] + wd * x
        s = ms[j]
        s += (gj * gj - s) * one_minus_rho
        ms[j] = s
        denom = s + eps
        if centered:
            m = mg[j]
            m += (gj - m) * one_minus_rho
            mg[j] = m
            denom -= m * m
        v = mu * mom[j] + lr * gj / np.sqrt(denom)
        mom[j] = v
        wr[j] = x - v


@njit(**_OPTS)
def rmsprop(w, c0, d, rows, g, lr, wd, one_minus_rho, mu, eps, centered, ms, mom, mg):
    """`mg` is only touched when `centered` (callers pass any same-shaped array otherwise)."""
    if _blocks(d) == 1:
        for i in prange(rows.shape[0]):
            prefetch_rows_ahead(rows, i, (w, ms, mom, mg))
            r = rows[i]
            if r >= 0:
                _rmsprop_row(w[r, c0:c0 + d], g[i, c0:c0 + d], ms[r], mom[r], mg[r], lr, wd, one_minus_rho, mu, eps,
                             centered)
    else:
        nb = _blocks(d)
        for k in prange(rows.shape[0] * nb):
            i, j0, j1 = _span(k, nb, d)
            r = rows[i]
            if r >= 0:
                _rmsprop_row(w[r, c0 + j0:c0 + j1], g[i, c0 + j0:c0 + j1], ms[r, j0:j1], mom[r, j0:j1], mg[r, j0:j1],
                             lr, wd, one_minus_rho, mu, eps, centered)


@njit(**_ROW)
def _adadelta_row(wr, gr, acc, acc_upd, lr, wd, rho, one_minus_rho, eps):
    for j in range(wr.shape[0]):
        x = wr[j]
        gj = gr[j] + wd * x
        a = acc[j] * rho + gj * gj * one_minus_rho
        acc[j] = a
        u = acc_upd[j]
        upd = np.sqrt(u + eps) / np.sqrt(a + eps) * gj
        wr[j] = x - lr * upd
        acc_upd[j] = u * rho + upd * upd * one_minus_rho


@njit(**_OPTS)
def adadelta(w, c0, d, rows, g, lr, wd, rho, one_minus_rho, eps, acc, acc_upd):
    if _blocks(d) == 1:
        for i in prange(rows.shape[0]):
            prefetch_rows_ahead(rows, i, (w, acc, acc_upd))
            r = rows[i]
            if r >= 0:
                _adadelta_row(w[r, c0:c0 + d], g[i, c0:c0 + d], acc[r], acc_upd[r], lr, wd, rho, one_minus_rho, eps)
    else:
        nb = _blocks(d)
        for k in prange(rows.shape[0] * nb):
            i, j0, j1 = _span(k, nb, d)
            r = rows[i]
            if r >= 0:
                _adadelta_row(w[r, c0 + j0:c0 + j1], g[i, c0 + j0:c0 + j1], acc[r, j0:j1], acc_upd[r, j0:j1], lr, wd,
                              rho, one_minus_rho, eps)


@njit(**_ROW)
def _moving_average_row(wr, gr, wd, mu):
    one = np.float32(1.0)
    for j in range(wr.shape[0]):
        x = wr[j]
        wr[j] = mu * x + (one - mu) * (gr[j] + wd * x)


@njit(**_OPTS)
def moving_average(w, c0, d, rows, g, wd, mu):
    """The "gradient" is a target value: w = mu·w + (1 − mu)·target."""
    if _blocks(d) == 1:
        for i in prange(rows.shape[0]):
            prefetch_rows_ahead(rows, i, (w,))
            r = rows[i]
            if r >= 0:
                _moving_average_row(w[r, c0:c0 + d], g[i, c0:c0 + d], wd, mu)
    else:
        nb = _blocks(d)
        for k in prange(rows.shape[0] * nb):
            i, j0, j1 = _span(k, nb, d)
            r = rows[i]
            if r >= 0:
                _moving_average_row(w[r, c0 + j0:c0 + j1], g[i, c0 + j0:c0 + j1], wd, mu)



@njit(**_ROW)
def _adam_row(wr, gr, m, v, vhat, lr_t, wd, beta1, beta2, eps, nesterov, amsgrad):
    one = np.float32(1.0)
    for j in range(wr.shape[0]):
        x = wr[j]
        gj = gr[j] + wd * x
        mj = m[j] + (gj - m[j]) * (one - beta1)
        vj = v[j] + (gj * gj - v[j]) * (one - beta2)
        m[j] = mj
        v[j] = vj
        if amsgrad:
            vj = max(vhat[j], vj)
            vhat[j] = vj
        num = mj * beta1 + (one - beta1) * gj if nesterov else mj
        wr[j] = x - lr_t * num / (np.sqrt(vj) + eps)


@njit(nogil=True, cache=True, inline="always")
def _adam_lr(lr, powers, r):
    return np.float32(lr * np.sqrt(1.0 - powers[r, 1]) / (1.0 - powers[r, 0]))


@njit(**_OPTS)
def adam(w, c0, d, rows, g, lr, wd, beta1, beta2, eps, nesterov, amsgrad, m, v, vhat, powers):
    """Adam / AMSGrad with per-row bias correction: `powers[r]` holds (beta1^t, beta2^t) of the row's step t.

    `vhat` is only touched when `amsgrad` (callers pass any same-shaped array otherwise).
    """
    if _blocks(d) == 1:
        for i in prange(rows.shape[0]):
            prefetch_rows_ahead(rows, i, (w, m, v, vhat))
            prefetch_rows_ahead(rows, i, (powers,))
            r = rows[i]
            if r >= 0:
                _adam_row(w[r, c0:c0 + d], g[i, c0:c0 + d], m[r], v[r], vhat[r], _adam_lr(lr, powers, r), wd, beta1,
                          beta2, eps, nesterov, amsgrad)
                powers[r, 0] *= beta1
                powers[r, 1] *= beta2
    else:
        nb = _blocks(d)
        for k in prange(rows.shape[0] * nb):
            i, j0, j1 = _span(k, nb, d)
            r = rows[i]
            if r >= 0:
                _adam_row(w[r, c0 + j0:c0 + j1], g[i, c0 + j0:c0 + j1], m[r, j0:j1], v[r, j0:j1], vhat[r, j0:j1],
                          _adam_lr(lr, powers, r), wd, beta1, beta2, eps, nesterov, amsgrad)
        for i in prange(rows.shape[0]):
            r = rows[i]
            if r >= 0:
                powers[r, 0] *= beta1
                powers[r, 1] *= beta2


@njit(**_OPTS)
def group_adagrad(w, c0, d, rows, g, lr, wd, beta, l2, sums):
    """Group lasso Adagrad: one accumulator per row segment grows by max_i g_i²; the segment shrinks as a group."""
    for i in prange(rows.shape[0]):
        prefetch_rows_ahead(rows, i, (w,))
        prefetch_rows_ahead(rows, i, (sums,))
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
def batch_softmax(w, c0, rows, alpha, global_step, last_step):
    """Item-frequency estimator: B = (1 − a)·B + a·(step − last_step); 1/B estimates the item's frequency."""
    for i in prange(rows.shape[0]):
        prefetch_rows_ahead(rows, i, (w,))
        prefetch_rows_ahead(rows, i, (last_step,))
        r = rows[i]
        if r < 0:
            continue
        w[r, c0] = (1.0 - alpha) * w[r, c0] + alpha * (global_step - last_step[r, 0])
        last_step[r, 0] = global_step
