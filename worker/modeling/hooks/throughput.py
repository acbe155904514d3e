"""Training throughput: steps and seconds per step every `run_every_n_secs`, and time-to-first-step."""
from __future__ import annotations

import time

from services.metrics import get_cli
from worker.modeling.hooks.base import StepContext, StepResult, TrainingHook


class ThroughputMetricHook(TrainingHook):
    """Emits `run_start_elapsed_time.all` (timer, once: first step − `start_time_secs`), and, at most every
    `run_every_n_secs`, `run_steps.all` (counter: steps since the last emission) and
    `run_steps_elapsed_time.all` (timer: seconds per step). Tags: model_name, cluster_type.

    An interval in which the global step did not move emits nothing and keeps accumulating (the original
    divides by zero there).
    """

    def __init__(self, model_name: str, start_time_secs: float | None = None, cluster_type: str = "stable",
                 run_every_n_secs: float = 30, client=None, clock=time.time) -> None:
        if run_every_n_secs < 0:
            raise ValueError(f"run_every_n_secs must be >= 0, got {run_every_n_secs!r}")
        self.tags = {"model_name": model_name, "cluster_type": cluster_type}
        self.start_time_secs = start_time_secs
        self.run_every_n_secs = run_every_n_secs
        self._client = client
        self._clock = clock
        self._emit_step: int | None = None
        self._emit_time = 0.0

    def begin(self) -> None:
        self._client = self._client or get_cli()
        self._emit_step = None

    def before_step(self, ctx: StepContext) -> list[str]:
        if self._emit_step is None:
            self._emit_step = ctx.global_step
            self._emit_time = self._clock()
            if self.start_time_secs is not None:
                self._client.emit_timer("run_start_elapsed_time.all", self._emit_time - self.start_time_secs,
                                        self.tags)
        return []

    def after_step(self, ctx: StepContext, result: StepResult) -> None:
        now = self._clock()
        elapsed = now - self._emit_time
        if elapsed < self.run_every_n_secs:
            return
        assert self._emit_step is not None, "before_step runs first"
        steps = result.global_step - self._emit_step
        if steps <= 0:
            return
        self._client.emit_counter("run_steps.all", steps, self.tags)
        self._client.emit_timer("run_steps_elapsed_time.all", elapsed / steps, self.tags)
        self._emit_step, self._emit_time = result.global_step, now
