"""Per-slice initializer and optimizer configs: what a PS table segment is made of.

Each config turns into the plain dict the store and PS take (`to_config()`); `str()` is stable so
identical slices can be recognised by their text, as Monolith's table merging did. An optimizer's
defaults are the PS optimizer's (`ps.config.OPTIMIZER_SPECS`; docs/defaults.md says where each comes from).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ps.config import OPTIMIZER_SPECS


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


def _ps_default(optimizer: str, key: str) -> Any:
    """The one default of an optimizer setting: the PS's (ps.config.OPTIMIZER_SPECS)."""
    return OPTIMIZER_SPECS[optimizer].defaults[key]


@dataclass(frozen=True)
class _Optimizer:
    learning_rate: float = _ps_default("sgd", "learning_rate")
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
    learning_rate: float = _ps_default("adagrad", "learning_rate")
    initial_accumulator_value: float = _ps_default("adagrad", "initial_accumulator_value")
    type_name: str = field(default="adagrad", init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("AdagradOptimizer.initial_accumulator_value", self.initial_accumulator_value)


@dataclass(frozen=True)
class FtrlOptimizer(_Optimizer):
    learning_rate: float = _ps_default("ftrl", "learning_rate")
    initial_accumulator_value: float = _ps_default("ftrl", "initial_accumulator_value")
    beta: float = _ps_default("ftrl", "beta")
    l1_regularization_strength: float = _ps_default("ftrl", "l1_regularization_strength")
    l2_regularization_strength: float = _ps_default("ftrl", "l2_regularization_strength")
    type_name: str = field(default="ftrl", init=False, repr=False)


@dataclass(frozen=True)
class AdamOptimizer(_Optimizer):
    learning_rate: float = _ps_default("adam", "learning_rate")
    beta1: float = _ps_default("adam", "beta1")
    beta2: float = _ps_default("adam", "beta2")
    epsilon: float = _ps_default("adam", "epsilon")
    type_name: str = field(default="adam", init=False, repr=False)


def to_config(obj: Any, what: str) -> dict[str, Any]:
    """Accept an entry config object or an already-plain dict with a "type"."""
    if hasattr(obj, "to_config"):
        return obj.to_config()
    if isinstance(obj, dict) and "type" in obj:
        return dict(obj)
    raise ValueError(f"{what} must be an entry config (e.g. SgdOptimizer(...)) or a dict with 'type', got {obj!r}")
