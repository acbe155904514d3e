"""User-chosen scalar model outputs as gauges, checked up front so a bad metric fails before training."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from services.metrics import get_cli
from worker.modeling.hooks.base import StepContext, StepResult, TrainingHook

ALLOWED_DTYPES = (np.dtype(np.float32), np.dtype(np.int32))


def _numpy_dtype(dtype) -> np.dtype:
    return np.dtype(getattr(dtype, "as_numpy_dtype", dtype))


def _check(name: str, shape, dtype) -> None:
    rank = shape.rank if hasattr(shape, "rank") else len(shape)
    if rank != 0:
        raise ValueError(f"custom metric {name!r} must be a scalar (rank 0), got shape {shape}")
    if _numpy_dtype(dtype) not in ALLOWED_DTYPES:
        raise ValueError(f"custom metric {name!r} must be float32 or int32, got {dtype}")


class CustomMetricHook(TrainingHook):
    """`CustomMetricHook({name: tensor_or_spec})` emits each fetched value as a `store` named `name`.

    Each entry is anything with `.shape` and `.dtype` (a `tf.Tensor`, `tf.TensorSpec`, numpy array): it must
    be a scalar float32 or int32, as in the original; fetched values are checked again.
    """

    def __init__(self, metrics: Mapping[str, object], client=None) -> None:
        if not metrics:
            raise ValueError("CustomMetricHook needs at least one metric, got none")
        for name, spec in metrics.items():
            if not hasattr(spec, "shape") or not hasattr(spec, "dtype"):
                raise ValueError(f"custom metric {name!r} must be a tensor or TensorSpec, got {type(spec).__name__}")
            _check(name, spec.shape, spec.dtype)
        self.names = list(metrics)
        self._client = client

    def begin(self) -> None:
        self._client = self._client or get_cli()

    def before_step(self, ctx: StepContext) -> list[str]:
        return list(self.names)

    def after_step(self, ctx: StepContext, result: StepResult) -> None:
        for name in self.names:
            if name not in result.fetches:
                raise KeyError(f"custom metric {name!r} was not fetched by the step")
            value = np.asarray(result.fetches[name])
            _check(name, value.shape, value.dtype)
            self._client.emit_store(name, float(value))
