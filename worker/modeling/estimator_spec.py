"""What a `model_fn` returns, and the mode names (TF2 has no `tf.estimator`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ModeKeys:
    TRAIN = "train"
    EVAL = "eval"
    PREDICT = "infer"

    @classmethod
    def all(cls) -> tuple[str, ...]:
        return (cls.TRAIN, cls.EVAL, cls.PREDICT)


@dataclass
class EstimatorSpec:
    """`label`/`pred` are tensors, or lists / dicts of tensors for multi-head models (one per head)."""

    label: Any = None
    pred: Any = None
    loss: Any = None
    head_name: Any = None
    optimizer: Any = None
    classification: Any = True
