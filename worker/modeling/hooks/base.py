"""The hook protocol of the worker loop.

TensorFlow 2 has no `tf.estimator.SessionRunHook`; the worker owns its loop and calls these methods
instead. A hook asks for extra tensors by name in `before_step` and receives their values (numpy) in
`after_step`, the way `SessionRunArgs`/`SessionRunValues` worked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepContext:
    """What a hook can see before a step runs."""

    global_step: int
    mode: str = "train"


@dataclass
class StepResult:
    """What a step produced: the loss, the global step after it, and any fetches hooks asked for."""

    global_step: int
    loss: float | None = None
    batch_size: int = 0
    fetches: dict[str, Any] = field(default_factory=dict)


class TrainingHook:
    """Base class: every method is optional; the loop calls them in this order."""

    def begin(self) -> None:
        """Called once before the first step (after the model is built)."""

    def before_step(self, ctx: StepContext) -> list[str]:
        """Return names of model outputs (`EstimatorSpec` predictions/extra outputs) to fetch."""
        return []

    def after_step(self, ctx: StepContext, result: StepResult) -> None:
        """Called after each step with the fetched values."""

    def end(self) -> None:
        """Called once when the loop finishes (also on error): flush and close here."""
