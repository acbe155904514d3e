"""Stop a server process cleanly on SIGTERM/SIGINT."""
from __future__ import annotations

import logging
import signal
import threading


def stop_on_signals(log: logging.Logger) -> threading.Event:
    """An event that SIGTERM or SIGINT sets (and logs): the server's loop waits on it, then drains and stops."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    return stop
