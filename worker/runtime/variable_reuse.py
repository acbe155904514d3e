"""Share one set of variables between the train, eval and predict traces of `model_fn`.

`model_fn` builds its Keras layers on every call; inside this scope the k-th variable any trace creates
is the k-th variable the first trace created, so all modes read the same weights (TF1 Estimators got
this from rebuilding graphs from a checkpoint). Shapes are checked so a mode-dependent layer order fails
loudly instead of silently mixing weights.
"""
from __future__ import annotations

import contextlib
import threading

import tensorflow as tf

_active = threading.local()


def current() -> VariableReuse | None:
    """The scope `model_fn` is being traced in on this thread, if any."""
    return getattr(_active, "reuse", None)


class VariableReuse:
    def __init__(self) -> None:
        self.variables: list[tf.Variable] = []
        self._next = 0

    @contextlib.contextmanager
    def scope(self):
        self._next = 0
        previous = getattr(_active, "reuse", None)
        _active.reuse = self
        try:
            with tf.variable_creator_scope(self._creator):
                yield self
        finally:
            _active.reuse = previous

    def adopt(self, var: tf.Variable) -> tf.Variable:
        """Count an existing variable as the next one created (a model brought back from a dump owns
        variables loaded with its functions): the first trace records it, later traces must adopt it again."""
        i = self._next
        self._next += 1
        if i < len(self.variables):
            if self.variables[i] is not var:
                raise ValueError(f"variable #{i} is {self.variables[i].name} in the first trace but {var.name} "
                                 f"now: variable creation order must not depend on the mode")
            return var
        self.variables.append(var)
        return var

    def _creator(self, next_creator, **kwargs):
        i = self._next
        self._next += 1
        if i < len(self.variables):
            var = self.variables[i]
            shape = kwargs.get("shape")
            if shape is None and "initial_value" in kwargs and not callable(kwargs["initial_value"]):
                shape = getattr(kwargs["initial_value"], "shape", None)
            if shape is not None and tf.TensorShape(shape).is_fully_defined() and \
                    tf.TensorShape(shape) != var.shape:
                raise ValueError(f"model_fn created variable #{i} with shape {tf.TensorShape(shape)} but the "
                                 f"first trace created {var.name} with shape {var.shape}: variable creation "
                                 f"order must not depend on the mode")
            return var
        var = next_creator(**kwargs)
        self.variables.append(var)
        return var

    @property
    def trainable(self) -> list[tf.Variable]:
        seen, out = set(), []
        for v in self.variables:
            if v.trainable and id(v) not in seen:
                seen.add(id(v))
                out.append(v)
        return out
