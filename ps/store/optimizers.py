"""How each optimizer runs in the store: its state layout and how a step calls its kernel.

Config keys, defaults and checks are `ps.config.OPTIMIZER_SPECS` (TensorFlow's names). Deliberate
differences from Monolith's C++ optimizers:
- ftrl: textbook sign(z) in the L1 term (Monolith uses signbit(z), wrong for λ1 > 0);
  `l2_regularization_strength` is the λ2 of w = −lr·(z − sign(z)·λ1)/(β + √n + lr·λ2), i.e. TF's l2 × 2.
- momentum: TensorFlow's accumulator (accum = μ·accum + g; w −= lr·accum). Monolith stores the velocity
  −lr·accum instead; both give the same weights while the learning rate is constant.
- rmsprop: TensorFlow's RMSProp (rho, momentum, epsilon inside the sqrt, optional centered), not
  Monolith's rmsprop/rmspropv2 with their literal "+1" denominators.
- adam/amsgrad: per-row β-powers exactly as Monolith keeps them, restored from checkpoints correctly
  (Monolith's restore writes β2^t into the β1^t slot).
- adagrad: the learning rate is the config's `learning_rate` unless the caller passes per-segment
  `learning_rates` (Monolith always takes the runtime tensor); optional TF-style `epsilon`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ps.config import OPTIMIZER_SPECS
from ps.kernels import optimizer_kernels as K

_f32 = np.float32


@dataclass(frozen=True)
class Optimizer:
    name: str
    element_state: Callable[[dict], list[tuple[str, float]]]
    """(name, initial value) of each per-element state array [capacity, segment_dim] (float32)."""
    row_state: Callable[[dict], list[tuple[str, float]]]
    """(name, initial value) of each per-row scalar (float64 columns of one [capacity, k] array)."""
    step: Callable
    """step(w, c0, d, rows, g, lr, wd, global_step, params, elem_states, row_state)"""


def check_step(kind: str, lr: float, global_step: int, field: str) -> None:
    """Run-time argument checks, done before the table is touched so a bad call changes nothing."""
    if not (isinstance(lr, int | float) and np.isfinite(lr) and lr >= 0):
        raise ValueError(f"{field}: learning rate {lr!r} must be a finite number >= 0")
    if kind == "ftrl" and lr <= 0:
        raise ValueError(f"{field}: ftrl learning rate must be > 0, got {lr!r}")
    if kind == "batch_softmax" and global_step < 0:
        raise ValueError(f"{field}: batch_softmax needs global_step >= 0, got {global_step}")


def _none(_p):
    return []


def _sgd(w, c0, d, rows, g, lr, wd, step, p, es, rs):
    K.sgd(w, c0, d, rows, g, _f32(lr), _f32(wd))


def _adagrad(w, c0, d, rows, g, lr, wd, step, p, es, rs):
    K.adagrad(w, c0, d, rows, g, _f32(lr), _f32(wd), _f32(p["epsilon"]), es[0])


def _ftrl(w, c0, d, rows, g, lr, wd, step, p, es, rs):
    power = p["learning_rate_power"]
    K.ftrl(w, c0, d, rows, g, _f32(lr), _f32(wd), _f32(-power), power == -0.5, _f32(p["beta"]),
           _f32(p["l1_regularization_strength"]), _f32(p["l2_regularization_strength"]), es[0], es[1])


def _momentum(w, c0, d, rows, g, lr, wd, step, p, es, rs):
    K.momentum(w, c0, d, rows, g, _f32(lr), _f32(wd), _f32(p["momentum"]), p["use_nesterov"], es[0])


def _rmsprop(w, c0, d, rows, g, lr, wd, step, p, es, rs):
    mg = es[2] if p["centered"] else es[0]
    K.rmsprop(w, c0, d, rows, g, _f32(lr), _f32(wd), _f32(1.0 - p["rho"]), _f32(p["momentum"]),
              _f32(p["epsilon"]), p["centered"], es[0], es[1], mg)


def _adadelta(w, c0, d, rows, g, lr, wd, step, p, es, rs):
    K.adadelta(w, c0, d, rows, g, _f32(lr), _f32(wd), _f32(p["rho"]), _f32(1.0 - p["rho"]),
               _f32(p["epsilon"]), es[0], es[1])


def _adam_like(amsgrad):
    def run(w, c0, d, rows, g, lr, wd, step, p, es, rs):
        vhat = es[2] if amsgrad else es[1]
        K.adam(w, c0, d, rows, g, _f32(lr), _f32(wd), _f32(p["beta1"]), _f32(p["beta2"]), _f32(p["epsilon"]),
               bool(p.get("use_nesterov", False)), amsgrad, es[0], es[1], vhat, rs)
    return run


def _group_adagrad(w, c0, d, rows, g, lr, wd, step, p, es, rs):
    K.group_adagrad(w, c0, d, rows, g, lr, wd, p["beta"], p["l2_regularization_strength"], rs)


def _moving_average(w, c0, d, rows, g, lr, wd, step, p, es, rs):
    K.moving_average(w, c0, d, rows, g, _f32(wd), _f32(p["momentum"]))


def _batch_softmax(w, c0, d, rows, g, lr, wd, step, p, es, rs):
    K.batch_softmax(w, c0, rows, float(lr), float(step), rs)


_POWERS = lambda p: [("beta1_power", p["beta1"]), ("beta2_power", p["beta2"])]

OPTIMIZERS: dict[str, Optimizer] = {o.name: o for o in [
    Optimizer("sgd", _none, _none, _sgd),
    Optimizer("adagrad", lambda p: [("accumulator", p["initial_accumulator_value"])], _none, _adagrad),
    Optimizer("ftrl", lambda p: [("accumulator", p["initial_accumulator_value"]), ("linear", 0.0)], _none, _ftrl),
    Optimizer("momentum", lambda p: [("accumulator", 0.0)], _none, _momentum),
    Optimizer("rmsprop", lambda p: [("ms", 0.0), ("mom", 0.0)] + ([("mg", 0.0)] if p["centered"] else []), _none,
              _rmsprop),
    Optimizer("adadelta", lambda p: [("accumulator", 0.0), ("accumulator_update", 0.0)], _none, _adadelta),
    Optimizer("adam", lambda p: [("m", 0.0), ("v", 0.0)], _POWERS, _adam_like(False)),
    Optimizer("amsgrad", lambda p: [("m", 0.0), ("v", 0.0), ("vhat", 0.0)], _POWERS, _adam_like(True)),
    Optimizer("group_adagrad", _none, lambda p: [("grad_square_sum", p["initial_accumulator_value"])],
              _group_adagrad),
    Optimizer("moving_average", _none, _none, _moving_average),
    Optimizer("batch_softmax", _none, lambda p: [("last_step", 0.0)], _batch_softmax),
]}
assert set(OPTIMIZERS) == set(OPTIMIZER_SPECS), "every configurable optimizer has a step and state layout"
