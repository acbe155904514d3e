"""Dense parameters in the shard format: Keras variables and their optimizer state ⇄ dense variables of a shard.

On PS shards a dense variable is a one-row table whose optimizer is the PS equivalent of the model's
Keras optimizer (`keras_optimizer_config`). In local mode the Keras optimizer keeps running in the
training graph (fast), and its state is converted to that same form only when a checkpoint is written
or read, so one checkpoint format serves both modes: a local checkpoint restores onto PS shards and a
distributed one restores locally, with the optimizer state carried over.

State that maps one to one: Adagrad's accumulator, FTRL's accumulator and linear term, Adam's m and v
(its per-row beta powers are beta^(t+1) for the Keras optimizer's `iterations` t, which is the global
step in local mode). An optimizer without a PS equivalent (RMSprop, SGD with momentum, ...) can only
train locally; its variables are kept as extra dense entries under `KERAS_STATE`, so local checkpoints
of such models still resume exactly.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tensorflow as tf

from ps.errors import CheckpointError
from ps.store.shard_state import ShardState
from worker.runtime.flat_calls import call_flat

log = logging.getLogger(__name__)

_ROW = np.zeros(1, np.int64)  # a dense variable is row 0 of its table
KERAS_STATE = "keras_optimizer_state/"
"""Name prefix of the saved variables of a Keras optimizer that has no PS equivalent."""
_FROZEN = {"type": "sgd", "learning_rate": 0.0}
"""The table optimizer of dense values saved with such an optimizer's state (the PS never trains them)."""


class DenseVariables:
    """The model's dense tf.Variables, named by creation order so every worker agrees on the names."""

    def __init__(self, variables: list[tf.Variable]) -> None:
        self.variables = variables
        self.names = [f"dense_{i:04d}" for i in range(len(variables))]
        self._assign_fn: Any = None

    def assign(self, values: dict[str, np.ndarray]) -> None:
        """Every variable's value at once (`tensors`, then `assign_tensors`)."""
        self.assign_tensors(self.tensors(values))

    def tensors(self, values: dict[str, np.ndarray]) -> list[tf.Tensor]:
        """`values` ({name: array}, every variable's) as `assign_tensors`' arguments, checked against the
        variables' shapes. With PS shards this runs on the prefetch thread, off the training thread."""
        missing = [n for n in self.names if n not in values]
        if missing:
            raise ValueError(f"dense values lack {missing}")
        out = []
        for name, var in zip(self.names, self.variables):
            value = tf.convert_to_tensor(values[name], dtype=var.dtype)
            if value.shape != var.shape:
                raise ValueError(f"dense value {name!r} has shape {value.shape}, the variable {var.shape}")
            out.append(value)
        return out

    def assign_tensors(self, tensors: list[tf.Tensor]) -> None:
        """Assign `tensors` (from `tensors`) to the variables: one call of a traced function on its flat
        signature (with PS shards, every step), without the per-call argument binding of a general call."""
        if not self.variables:
            return
        if self._assign_fn is None:
            variables = self.variables

            def assign_all(*new):
                for var, value in zip(variables, new):
                    var.assign(value)

            signature = [tf.TensorSpec(v.shape, v.dtype) for v in variables]
            traced = tf.function(assign_all, input_signature=signature, autograph=False)
            self._assign_fn = traced.get_concrete_function()
        call_flat(self._assign_fn, tensors)


def keras_optimizer_config(optimizer: Any) -> dict[str, Any]:
    """The PS optimizer config equivalent to a Keras optimizer (dense parameters living on the PS)."""
    name = type(optimizer).__name__.lower()
    lr = optimizer.learning_rate
    lr = float(lr.numpy()) if hasattr(lr, "numpy") else float(lr)
    if name == "sgd":
        if float(getattr(optimizer, "momentum", 0.0) or 0.0) != 0.0:
            raise ValueError("distributed mode supports SGD without momentum only (momentum is not 0)")
        return {"type": "sgd", "learning_rate": lr}
    if name == "adagrad":
        return {"type": "adagrad", "learning_rate": lr, "epsilon": float(optimizer.epsilon),
                "initial_accumulator_value": float(optimizer.initial_accumulator_value)}
    if name == "adam":
        return {"type": "adam", "learning_rate": lr, "beta1": float(optimizer.beta_1),
                "beta2": float(optimizer.beta_2), "epsilon": float(optimizer.epsilon)}
    if name == "ftrl":
        return {"type": "ftrl", "learning_rate": lr,
                "initial_accumulator_value": float(optimizer.initial_accumulator_value),
                "beta": float(optimizer.beta),
                "l1_regularization_strength": float(optimizer.l1_regularization_strength),
                "l2_regularization_strength": float(optimizer.l2_regularization_strength)}
    raise ValueError(f"dense optimizer {type(optimizer).__name__} has no PS equivalent (use SGD, Adagrad, Adam, Ftrl)")


def _ps_config(optimizer: Any) -> dict[str, Any] | None:
    try:
        return keras_optimizer_config(optimizer)
    except ValueError:
        return None


def _slots(optimizer: Any, kind: str) -> dict[str, list[tf.Variable]]:
    """Keras slot variables per store state array name (one list entry per dense variable)."""
    if kind == "adagrad":
        return {"segment0.accumulator": optimizer._accumulators}
    if kind == "ftrl":
        return {"segment0.accumulator": optimizer._accumulators, "segment0.linear": optimizer._linears}
    if kind == "adam":
        return {"segment0.m": optimizer._momentums, "segment0.v": optimizer._velocities}
    return {}


def export_dense(shard: ShardState, dense: DenseVariables, optimizer: Any) -> None:
    """Put the dense values and the optimizer's state into `shard.dense` (replacing what was there)."""
    shard.dense.clear()
    config = _ps_config(optimizer) if optimizer is not None else None
    for i, (name, var) in enumerate(zip(dense.names, dense.variables)):
        value = var.numpy()
        shard.create_dense(name, list(value.shape), config or _FROZEN, value.reshape(-1))
        table = shard.dense_var(name).table
        if config is not None:
            arrays = {key: vs[i].numpy().reshape(1, -1) for key, vs in _slots(optimizer, config["type"]).items()}
            if config["type"] == "adam":
                t = int(optimizer.iterations.numpy()) + 1
                arrays["segment0.row_state"] = np.array([[config["beta1"] ** t, config["beta2"] ** t]])
            table.set_row_arrays(_ROW, arrays)
    if config is None and optimizer is not None:
        for k, var in enumerate(optimizer.variables):
            value = np.asarray(var.numpy(), np.float32)
            shard.create_dense(f"{KERAS_STATE}{k:04d}", list(value.shape) or [1], _FROZEN, value.reshape(-1))


def import_dense(shard: ShardState, dense: DenseVariables, optimizer: Any) -> None:
    """Assign the dense values (and, with `optimizer`, its state) that a restore put into `shard.dense`."""
    missing = [n for n in dense.names if n not in shard.dense]
    if missing:
        raise CheckpointError(f"the checkpoint has no dense variables {missing}")
    dense.assign({n: shard.dense[n].table.lookup(_ROW)[0].reshape(shard.dense[n].shape) for n in dense.names})
    if optimizer is None or not dense.variables:
        return
    optimizer.build(dense.variables)  # creates the slots if the first step has not yet
    config = _ps_config(optimizer)
    if config is None:
        _import_keras_state(shard, optimizer)
        return
    saved = shard.dense[dense.names[0]].table.config["segments"][0]["optimizer"]["type"]
    if saved != config["type"]:
        raise CheckpointError(f"the checkpoint's dense optimizer is {saved!r}, the model's is {config['type']!r}: "
                              "its state cannot be carried over")
    for i, name in enumerate(dense.names):
        arrays = shard.dense[name].table.row_arrays(_ROW)
        for key, slot_vars in _slots(optimizer, config["type"]).items():
            slot_vars[i].assign(arrays[key].reshape(slot_vars[i].shape))
    optimizer.iterations.assign(shard.global_step)


def _import_keras_state(shard: ShardState, optimizer: Any) -> None:
    saved = sorted(n for n in shard.dense if n.startswith(KERAS_STATE))
    if len(saved) != len(optimizer.variables):
        raise CheckpointError(f"the checkpoint holds {len(saved)} variables of the dense optimizer, "
                              f"{type(optimizer).__name__} has {len(optimizer.variables)}")
    for name, var in zip(saved, optimizer.variables):
        value = shard.dense[name].table.lookup(_ROW)[0]
        var.assign(value.reshape(var.shape).astype(np.dtype(getattr(var.dtype, "as_numpy_dtype", var.dtype))))
