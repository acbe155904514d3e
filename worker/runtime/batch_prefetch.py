"""Read and look up upcoming batches on a background thread, with a bound on embedding staleness.

Reading and deduplicating run ahead freely; the PS lookup of step i waits until the gradients of step
i - 1 - staleness have been pushed. staleness 0 is strictly sequential (bit-reproducible); k lets the
lookups of the next k steps overlap the current step's compute and push.

The thread owns the input: it drops its reference to `read` (and so to the tf.data iterator inside it)
when it ends, and `close` does not wait for it. Tearing a tf.data iterator down can block for up to a
minute (docs/input-pipeline-shutdown.md), and a read can block on a slow input; neither may hold up the
training loop, evaluation or the end of the process.

`lookup_on_get`: the lookup runs in `get`, on the consumer's thread, right before the batch is used. For
an in-process store, whose lookup costs less than waking another thread: the consumer has pushed every
earlier step's gradients by then (staleness 0 whatever the bound), and only reading runs ahead.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_END = object()


class NoBatchYet(Exception):
    """`get(timeout)` found no batch in time (never an error of the input itself)."""


class Prefetcher:
    def __init__(self, read: Callable[[], Any], lookup: Callable[[Any], Any], staleness: int,
                 lookup_on_get: bool = False) -> None:
        if not isinstance(staleness, int) or staleness < 0:
            raise ValueError(f"staleness must be an int >= 0, got {staleness!r}")
        self._read, self._lookup, self.staleness = read, lookup, staleness
        self._get_lookup = lookup if lookup_on_get else None
        self._queue: queue.Queue = queue.Queue(maxsize=staleness + 1)
        self._cond = threading.Condition()
        self._completed = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._produce()
        finally:
            self._read = self._lookup = None  # type: ignore[assignment]  # the input is torn down here, on this thread

    def _produce(self) -> None:
        i = 0
        try:
            while not self._stop:
                try:
                    item = self._read()
                except StopIteration:
                    break
                if self._get_lookup is not None:
                    self._put(item)
                    continue
                with self._cond:
                    self._cond.wait_for(lambda step=i: self._stop or self._completed >= step - self.staleness)  # type: ignore[misc]
                if self._stop:
                    return
                self._put(self._lookup(item))
                i += 1
        except BaseException as exc:  # re-raised in the consumer
            self._put(exc)
            return
        self._put(_END)

    def _put(self, item: Any) -> None:
        while not self._stop:
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self, timeout: float | None = None) -> Any:
        """The next looked-up batch, or None at the end of the data; `NoBatchYet` if none came within
        `timeout` seconds (None: wait)."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise NoBatchYet(f"no batch within {timeout}s") from None
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item if self._get_lookup is None else self._get_lookup(item)

    def done(self) -> None:
        """The current step's gradients are pushed: lets the next lookup proceed."""
        with self._cond:
            self._completed += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Stop reading ahead. Returns at once: no new lookup starts after this, and the thread ends (and
        releases the input) on its own, however long a read in progress or the input's teardown takes."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
