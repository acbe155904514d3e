"""Send a step's gradients and advance the global step, off the training thread when the PS is remote.

With a remote PS the dense push, the sparse push and the global-step increment are network round trips;
running them on a background thread lets the next step's compute start at once. Ordering and the
staleness bound are kept by the prefetcher: it is told a step is done only when its push completed.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class GradientPusher:
    def __init__(self, push: Callable[..., int], on_done: Callable[[], None], asynchronous: bool,
                 max_inflight: int, start_step: int) -> None:
        self._push, self._on_done = push, on_done
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="push") if asynchronous else None
        self._inflight: deque[Future] = deque()
        self.max_inflight = max(1, max_inflight)
        self.last_step = start_step

    @property
    def pending(self) -> int:
        return len(self._inflight)

    @property
    def step_estimate(self) -> int:
        """The global step once everything in flight lands (other workers' steps show up on completion)."""
        return self.last_step + len(self._inflight)

    def submit(self, *args: Any) -> None:
        if self._pool is None:
            try:
                self.last_step = self._push(*args)
            finally:
                self._on_done()
            return
        future = self._pool.submit(self._push, *args)
        future.add_done_callback(lambda _: self._on_done())
        self._inflight.append(future)
        self._reap(block=len(self._inflight) > self.max_inflight)

    def _reap(self, block: bool) -> None:
        while self._inflight and (block or self._inflight[0].done()):
            self.last_step = max(self.last_step, self._inflight.popleft().result())
            block = False

    def drain(self) -> int:
        while self._inflight:
            self.last_step = max(self.last_step, self._inflight.popleft().result())
        return self.last_step

    def close(self) -> None:
        """Wait for in-flight pushes (their errors were or will be raised by `drain`/`submit`)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
