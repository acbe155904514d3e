"""Deep-insight messages to partitioned text files, written by a background thread."""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from worker.modeling.hooks.base import StepContext, StepResult, TrainingHook
from worker.modeling.hooks.partitioned_file import WriteOnlyFileAndStat
from worker.modeling.hooks.vepfs import default_layout_fn, default_parse_fn, vepfs_key_fn

log = logging.getLogger(__name__)

DEFAULT_BASE = "/vepfs/jaguar_deepinsight_results"
CLEANUP_SECS = 600


def _items(value) -> list:
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, np.ndarray):
        return list(value.reshape(-1))
    return [value]


class FileMetricHook(TrainingHook):
    """Write each fetched `fetch_name` message as a line in `key_fn(record, worker_id, base_name)`.

    Messages are parsed (`parse_fn`, JSON by default), routed to a `WriteOnlyFileAndStat` per key and laid
    out (`layout_fn`). Files idle for 24 h are closed every `CLEANUP_SECS`. A message that cannot be parsed
    or routed is logged and counted in `dropped` rather than stopping the writer. `end()` drains the queue
    and closes every file, so everything queued before it is on disk afterwards.
    """

    def __init__(self, worker_id: int = 0, key_fn: Callable = vepfs_key_fn, layout_fn: Callable = default_layout_fn,
                 parse_fn: Callable = default_parse_fn, base_name: str = DEFAULT_BASE, file_ext: str = "txt",
                 batch_size: int = 1024, partition_size: int = 1_000_000, fetch_name: str = "deep_insight_op") -> None:
        if key_fn is None:
            raise ValueError("FileMetricHook needs a key_fn (e.g. vepfs_key_fn) to route records to files")
        for field, value in (("batch_size", batch_size), ("partition_size", partition_size)):
            if value < 1:
                raise ValueError(f"FileMetricHook {field} must be >= 1, got {value!r}")
        self.worker_id, self.base_name, self.fetch_name = worker_id, base_name, fetch_name
        self.key_fn, self.layout_fn, self.parse_fn = key_fn, layout_fn, parse_fn
        self.file_options: dict[str, Any] = {"partition_size": partition_size, "file_ext": file_ext,
                                             "batch_size": batch_size}
        self.files: dict[str, WriteOnlyFileAndStat] = {}
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_cleanup = time.monotonic()

    def before_step(self, ctx: StepContext) -> list[str]:
        return [self.fetch_name]

    def after_step(self, ctx: StepContext, result: StepResult) -> None:
        value = result.fetches.get(self.fetch_name)
        if value is not None:
            self.put(value)

    def put(self, messages) -> None:
        """Queue one message or a list/array of them (empty ones are skipped)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="file-metric-hook", daemon=True)
            self._thread.start()
        for item in _items(messages):
            if item is not None and len(item) > 0:
                self._queue.put(item)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                self._cleanup()
                continue
            try:
                self._write(item)
            finally:
                self._queue.task_done()
            self._cleanup()

    def _write(self, item) -> None:
        try:
            obj = self.parse_fn(item)
            key = self.key_fn(obj, self.worker_id, self.base_name)
            line = self.layout_fn(obj)
        except Exception as exc:  # noqa: BLE001 - a bad message must not stop the writer
            self.dropped += 1
            log.warning("dropping metric message %r: %s", str(item)[:200], exc)
            return
        try:
            sink = self.files.get(key)
            if sink is None:
                sink = self.files[key] = WriteOnlyFileAndStat(key, **self.file_options)
            sink.write(line)
        except OSError as exc:
            self.dropped += 1
            log.error("cannot write metric line to %s: %s", key, exc)

    def _cleanup(self) -> None:
        if time.monotonic() - self._last_cleanup < CLEANUP_SECS:
            return
        self._last_cleanup = time.monotonic()
        for key in [k for k, sink in self.files.items() if not sink.is_available()]:
            self.files[key].close()  # flushed before it stops being visible in `files`
            del self.files[key]

    def end(self) -> None:
        if self._thread is not None:
            self._queue.join()
            self._stop.set()
            self._thread.join()
            self._thread = None
        for sink in self.files.values():
            sink.close()
        self.files.clear()
        self._stop.clear()
