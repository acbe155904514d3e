"""TensorFlow profiler windows during training, chosen by steps or seconds."""
from __future__ import annotations

import logging
from typing import Any

import tensorflow as tf

from worker.modeling.hooks.base import StepContext, StepResult, TrainingHook

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 10
DEFER_STEPS = 500


class Tf2ProfilerHook(TrainingHook):
    """Profile `init_step_range = (start, end)` steps of this loop, then a window of the same length every
    `save_steps` steps or `save_secs` seconds after the last one started.

    Steps are counted from `begin()` (0 = the first step this hook sees). Without `init_step_range` the
    first window starts `DEFER_STEPS` (500) steps in and lasts `DEFAULT_WINDOW` (10) steps, so start-up
    noise is not profiled. `save_steps` must exceed the window length (windows would overlap otherwise).
    Each window writes one `logdir/plugins/profile/<run>/` dump (TensorBoard's profile plugin layout);
    steps inside a window are annotated with `tf.profiler.experimental.Trace(step_num=...)`.
    """

    def __init__(self, logdir: str, init_step_range: tuple[int, int] | None = None, save_steps: int | None = None,
                 save_secs: float | None = None, options=None) -> None:
        start, end = init_step_range if init_step_range is not None else (None, None)
        if start is not None and end is not None and end <= start:
            raise ValueError(f"init_step_range end must be > start, got {init_step_range}")
        if (start is None) != (end is None):
            raise ValueError(f"init_step_range needs both start and end, got {init_step_range}")
        self.window = end - start if start is not None and end is not None else DEFAULT_WINDOW
        if save_steps is not None and save_steps <= self.window:
            raise ValueError(f"save_steps ({save_steps}) must be greater than the profiling window ({self.window})")
        if save_steps is not None and save_secs is not None:
            raise ValueError("give save_steps or save_secs, not both")
        self.logdir, self.options = logdir, options
        # the first window (None until begin(), without init_step_range)
        self._start: int = DEFER_STEPS if start is None else start
        self._end: int = DEFER_STEPS + self.window if end is None else end
        self._timer = None
        if save_steps is not None or save_secs is not None:
            self._timer = tf.compat.v1.train.SecondOrStepTimer(every_steps=save_steps, every_secs=save_secs)
        self._step = 0
        self._profiling = False
        self._trace: Any = None
        self.windows: list[tuple[int, int]] = []

    def begin(self) -> None:
        self._step = 0

    def before_step(self, ctx: StepContext) -> list[str]:
        step = self._step
        if not self._profiling:
            if self._start <= step < self._end and not self.windows:
                self._start_profiling(step, self._end)
            elif self.windows and self._timer is not None and self._timer.should_trigger_for_step(step):
                self._start_profiling(step, step + self.window)
        if self._profiling:
            self._trace = tf.profiler.experimental.Trace("train", step_num=ctx.global_step, _r=1)
            self._trace.__enter__()
        return []

    def after_step(self, ctx: StepContext, result: StepResult) -> None:
        if self._trace is not None:
            self._trace.__exit__(None, None, None)
            self._trace = None
        self._step += 1
        if self._profiling and self._step >= self._end:
            self._stop_profiling()

    def end(self) -> None:
        if self._trace is not None:
            self._trace.__exit__(None, None, None)
            self._trace = None
        if self._profiling:
            self._stop_profiling()

    def _start_profiling(self, start: int, end: int) -> None:
        try:
            tf.profiler.experimental.start(self.logdir, options=self.options)
        except tf.errors.AlreadyExistsError:
            log.warning("another profiler session is running; skipping the window at step %d", start)
            return
        self._start, self._end = start, end
        if self._timer is not None:
            self._timer.update_last_triggered_step(start)
        self._profiling = True
        self.windows.append((start, end))
        log.info("profiling steps [%d, %d) into %s", start, end, self.logdir)

    def _stop_profiling(self) -> None:
        self._profiling = False
        try:
            tf.profiler.experimental.stop()
        except tf.errors.UnavailableError:
            log.warning("profiler was not running at step %d", self._step)
