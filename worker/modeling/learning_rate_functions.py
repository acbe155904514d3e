"""Learning-rate schedules usable as optimizer learning rates and as per-slice embedding learning rates.

The worker evaluates a slice's schedule in plain Python each step (`value(step)`) and sends the float to
the PS; dense optimizers call the object with a step tensor. `str()` names the class and its sorted
parameters, so two configs compare equal exactly when their schedules do.
"""

from __future__ import annotations

import abc
import math

import tensorflow as tf


class LearningRateFunction(abc.ABC):
    """A learning rate as a function of the global step."""

    @abc.abstractmethod
    def __call__(self, step=None) -> tf.Tensor:
        """The learning rate at `step` (default: the tf.compat.v1 global step) as a TF tensor."""

    @abc.abstractmethod
    def value(self, step: int) -> float:
        """The learning rate at `step` as a Python float."""

    def _params(self) -> dict:
        return dict(vars(self))

    def __str__(self) -> str:
        params = ",".join(f"{k}={v!r}" for k, v in sorted(self._params().items()))
        return f"{type(self).__name__}({params})"

    __repr__ = __str__

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self._params() == other._params()

    def __hash__(self) -> int:
        return hash(str(self))


def _finite_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


class PolynomialDecay(LearningRateFunction):
    """`(initial - end) * (1 - step / decay_steps) ** power + end`, with TensorFlow's `polynomial_decay` rules.

    Without `cycle` the step is capped at `decay_steps`; with `cycle` the horizon grows to the next
    multiple of `decay_steps` at or above the step (step 0 uses `decay_steps`).
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int | float,
        end_learning_rate: float = 0.0001,
        power: float = 1.0,
        cycle: bool = False,
        name: str | None = None,
    ):
        self.initial_learning_rate = _finite_number("initial_learning_rate", initial_learning_rate)
        if isinstance(decay_steps, float) and decay_steps.is_integer():
            decay_steps = int(decay_steps)
        if isinstance(decay_steps, bool) or not isinstance(decay_steps, int) or decay_steps <= 0:
            raise ValueError(f"decay_steps must be a positive integer, got {decay_steps!r}")
        self.decay_steps = decay_steps
        self.end_learning_rate = _finite_number("end_learning_rate", end_learning_rate)
        self.power = _finite_number("power", power)
        if self.power < 0:
            raise ValueError(f"power must be >= 0, got {power!r}")
        if not isinstance(cycle, bool):
            raise ValueError(f"cycle must be a bool, got {cycle!r}")
        self.cycle = cycle
        if name is not None and not isinstance(name, str):
            raise ValueError(f"name must be a str or None, got {name!r}")
        self.name = name

    def value(self, step: int) -> float:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        horizon = self.decay_steps
        if self.cycle:
            horizon *= max(1, math.ceil(step / self.decay_steps))
        else:
            step = min(step, self.decay_steps)
        fraction = 1.0 - step / horizon
        return (self.initial_learning_rate - self.end_learning_rate) * fraction**self.power + self.end_learning_rate

    def __call__(self, step=None) -> tf.Tensor:
        if step is None:
            step = tf.compat.v1.train.get_or_create_global_step()
        with tf.name_scope(self.name or "PolynomialDecay"):
            step = tf.cast(tf.convert_to_tensor(step), tf.float32)
            decay_steps = tf.constant(float(self.decay_steps))
            if self.cycle:
                multiplier = tf.where(tf.equal(step, 0.0), 1.0, tf.math.ceil(step / decay_steps))
                decay_steps = decay_steps * multiplier
            else:
                step = tf.minimum(step, decay_steps)
            fraction = 1.0 - step / decay_steps
            initial = tf.constant(self.initial_learning_rate, tf.float32)
            end = tf.constant(self.end_learning_rate, tf.float32)
            return (initial - end) * tf.pow(fraction, self.power) + end
