"""The training loss as a gauge, every step."""
from __future__ import annotations

from services.metrics import get_cli
from worker.modeling.hooks.base import StepContext, StepResult, TrainingHook


class StepLossMetricHook(TrainingHook):
    """Sets `step_loss` (store) after each step: the step's loss, or the fetch named `loss_name`."""

    def __init__(self, loss_name: str | None = None, client=None) -> None:
        self.loss_name = loss_name
        self._client = client

    def begin(self) -> None:
        self._client = self._client or get_cli()

    def before_step(self, ctx: StepContext) -> list[str]:
        return [self.loss_name] if self.loss_name else []

    def after_step(self, ctx: StepContext, result: StepResult) -> None:
        loss = result.fetches[self.loss_name] if self.loss_name else result.loss
        if loss is not None:
            self._client.emit_store("step_loss", float(loss))
