"""Where a training step's time goes: seconds per phase, summed by the threads that run the phases.

Each phase is timed by the one thread that runs it (input, dedupe, lookup and dense pull on the prefetch
thread; compute, the waits and hooks on the training thread; pushes on the push thread, or the training
thread in local mode), so the sums need no lock. Timing is always on: a phase costs two
`time.perf_counter` calls. Exporting is what is optional: `StepTimeExporter` turns the sums since its
last call into milliseconds per step for Prometheus (`services.metrics`) and TensorBoard scalars.

Phases on other threads overlap the training thread's: with staleness > 0 a lookup or push is only on
the critical path as far as the training thread waits for it (`lookup_wait`, `push_wait`).
"""
from __future__ import annotations

import os
import time
from typing import Any

PHASES = ("input", "dedupe", "lookup", "lookup_wait", "compute", "gradient_push", "push_wait", "hooks")
"""input: reading the next batch; dedupe: one id list per table; lookup: the rows (and, when remote, the
dense values) of a step, one round trip per shard; lookup_wait: the training thread waiting for them;
compute: forward and backward (the traced step, and its outputs read back); gradient_push: claiming the
step and sending its row (and, when remote, dense) gradients, one round trip per shard (locally the dense
optimizer runs in the traced step); push_wait: the training thread waiting for pushes in flight (the
staleness bound); hooks: hooks, fetches and progress reports."""

now = time.perf_counter


class StepTimes:
    """Seconds per phase and steps, since construction."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.steps = 0
        self.total = 0.0  # wall time of the training thread's steps

    def add(self, phase: str, started: float) -> float:
        """Add the time since `started` (a `now()`) to `phase`; returns now, to start the next phase."""
        t = now()
        self.seconds[phase] += t - started
        return t

    def snapshot(self) -> tuple[dict[str, float], int, float]:
        return dict(self.seconds), self.steps, self.total

    def ms_per_step(self, since: tuple[dict[str, float], int, float] | None = None) -> dict[str, float]:
        """Milliseconds per step of each phase (and `step`: the whole step), since `since` (a snapshot)."""
        seconds, steps, total = since or (dict.fromkeys(PHASES, 0.0), 0, 0.0)
        n = self.steps - steps
        if n <= 0:
            return {}
        out = {p: 1000.0 * (self.seconds[p] - seconds[p]) / n for p in PHASES}
        out["step"] = 1000.0 * (self.total - total) / n
        return out


class StepTimeExporter:
    """Writes milliseconds per step per phase, averaged since its last call, to Prometheus and TensorBoard.

    Prometheus: the gauge `<prefix>_step_phase_ms{phase=...}` (`step` is the whole step). TensorBoard:
    scalars `step_time/<phase>_ms` in `<tensorboard_dir>`. Either may be off (None)."""

    def __init__(self, metrics: Any | None, tensorboard_dir: str | None, tags: dict[str, str] | None = None) -> None:
        self.metrics = metrics
        self.tensorboard_dir = tensorboard_dir
        self.tags = dict(tags or {})
        self._writer: Any = None
        self._last: tuple[dict[str, float], int, float] | None = None

    def export(self, times: StepTimes, global_step: int) -> dict[str, float]:
        ms = times.ms_per_step(self._last)
        self._last = times.snapshot()
        if not ms:
            return ms
        if self.metrics is not None:
            for phase, value in ms.items():
                self.metrics.emit_store("step_phase_ms", value, {**self.tags, "phase": phase})
        if self.tensorboard_dir is not None:
            self._write_scalars(ms, global_step)
        return ms

    def _write_scalars(self, ms: dict[str, float], global_step: int) -> None:
        import tensorflow as tf
        from tensorflow.core.framework.summary_pb2 import SummaryMetadata

        if self._writer is None:
            os.makedirs(self.tensorboard_dir, exist_ok=True)  # type: ignore[arg-type]
            self._writer = tf.summary.create_file_writer(self.tensorboard_dir)
        scalar = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars")).SerializeToString()
        with self._writer.as_default():
            for phase, value in ms.items():
                tf.summary.write(f"step_time/{phase}_ms", tf.constant(value, tf.float32), step=global_step,
                                 metadata=scalar)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
