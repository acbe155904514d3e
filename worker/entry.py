"""Per-slice initializer and optimizer configs: what a PS table segment is made of.

Each config turns into the plain dict the store and PS take (`to_config()`); `str()` is stable so
identical slices can be recognised by their text, as the seed's table merging did. An optimizer's
defaults are the PS optimizer's, which are Monolith's (docs/defaults.md says where each comes from).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


@dataclass(frozen=True)
class ZerosInitializer:
    def to_config(self) -> dict[str, Any]:
        return {"type": "zeros"}


@dataclass(frozen=True)
class OnesInitializer:
    def to_config(self) -> dict[str, Any]:
        return {"type": "ones"}


@dataclass(frozen=True)
class ConstantsInitializer:
    value: float = 0.0

    def to_config(self) -> dict[str, Any]:
        return {"type": "constant", "value": float(self.value)}


@dataclass(frozen=True)
class RandomUniformInitializer:
    minval: float = -0.05
    maxval: float = 0.05
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.minval < self.maxval:
            raise ValueError(f"RandomUniformInitializer needs minval < maxval, got {self.minval!r}, {self.maxval!r}")

    def to_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"type": "random_uniform", "minval": float(self.minval), "maxval": float(self.maxval)}
        if self.seed is not None:
            cfg["seed"] = int(self.seed)
        return cfg


@dataclass(frozen=True)
class _Optimizer:
    learning_rate: float = 0.01
    type_name: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        _positive(f"{type(self).__name__}.learning_rate", self.learning_rate, allow_zero=True)

    def to_config(self) -> dict[str, Any]:
        cfg = {k: v for k, v in asdict(self).items() if k != "type_name"}
        return {"type": self.type_name, **cfg}


@dataclass(frozen=True)
class SgdOptimizer(_Optimizer):
    type_name: str = field(default="sgd", init=False, repr=False)


@dataclass(frozen=True)
class AdagradOptimizer(_Optimizer):
    learning_rate: float = 0.001
    initial_accumulator_value: float = 0.1
    type_name: str = field(default="adagrad", init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("AdagradOptimizer.initial_accumulator_value", self.initial_accumulator_value)


@dataclass(frozen=True)
class FtrlOptimizer(_Optimizer):
    learning_rate: float = 0.01
    initial_accumulator_value: float = 0.1
    beta: float = 0.0
    l1_regularization_strength: float = 0.0
    l2_regularization_strength: float = 0.0
    type_name: str = field(default="ftrl", init=False, repr=False)


@dataclass(frozen=True)
class AdamOptimizer(_Optimizer):
    learning_rate: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    epsilon: float = 0.01
    type_name: str = field(default="adam", init=False, repr=False)


def to_config(obj: Any, what: str) -> dict[str, Any]:
    """Accept an entry config object or an already-plain dict with a "type"."""
    if hasattr(obj, "to_config"):
        return obj.to_config()
    if isinstance(obj, dict) and "type" in obj:
        return dict(obj)
    raise ValueError(f"{what} must be an entry config (e.g. SgdOptimizer(...)) or a dict with 'type', got {obj!r}")


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
