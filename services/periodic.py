"""`Periodic`: a function called every interval in a daemon thread until stopped.

For background rounds that must never take their process down (online sync, watching an export base):
an exception in a round is logged with its traceback and the next round runs as planned.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class Periodic:
    def __init__(self, name: str, interval_s: float, round_fn: Callable[[], object], log: logging.Logger,
                 stop: threading.Event | None = None) -> None:
        """`stop` (default: a new event) ends the loop when set, by `close` or by its owner."""
        self.name, self.interval_s = name, interval_s
        self._round, self._log = round_fn, log
        self.stop = stop or threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Periodic:
        def loop() -> None:
            while not self.stop.wait(self.interval_s):
                try:
                    self._round()
                except Exception:  # a failed round is logged; the next one runs as planned
                    self._log.exception("%s: round failed", self.name)

        self._thread = threading.Thread(target=loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Set `stop` and wait (up to `timeout`) for the round in flight."""
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
