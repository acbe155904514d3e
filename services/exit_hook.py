"""Count how a process was told to stop: `exit_hook{server_type, index, sig}` at exit.

A PS or worker killed by the scheduler otherwise vanishes from the metrics without a trace. `install()`
records SIGHUP/SIGINT/SIGTERM, then either hands the signal to the handler that was installed before
(a role's graceful shutdown keeps working) or exits with `128 + signo`, the code a shell reports for a
death by that signal. At exit, if a signal was recorded, the counter is emitted and the client flushed
(`MONOLITH_METRICS_TEXTFILE` keeps it past the end of the process).
"""
from __future__ import annotations

import atexit
import logging
import signal
import sys
import threading

from services.metrics import get_cli

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)

_state: dict = {"sig": None, "server_type": None, "index": None, "client": None, "registered": False}
_previous: dict[int, object] = {}


def record_signal(signo: int) -> None:
    """Remember `signo` as the reason for exiting (for roles that handle signals themselves)."""
    _state["sig"] = int(signo)


def received_signal() -> int | None:
    return _state["sig"]


def _handler(signo: int, frame) -> None:
    record_signal(signo)
    log.info("received signal %s", signal.Signals(signo).name)
    previous = _previous.get(signo)
    if callable(previous) and previous is not signal.default_int_handler:
        previous(signo, frame)
        return
    sys.exit(128 + signo)


def emit_exit_metric() -> bool:
    """Emit `exit_hook` (1) if a signal was recorded; return whether it was. Runs at exit."""
    sig = _state["sig"]
    if sig is None or _state["server_type"] is None:
        return False
    client = _state["client"] or get_cli()
    tags = {"server_type": _state["server_type"], "index": str(_state["index"]), "sig": str(sig)}
    client.emit_counter("exit_hook", 1, tags)
    client.flush()
    log.info("exit_hook emitted: %s", tags)
    return True


def install(server_type: str, index: int | str, client=None) -> None:
    """Install the signal handlers (main thread only) and the at-exit emission for this role."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("exit_hook.install must be called from the main thread (signal handlers live there)")
    if not server_type:
        raise ValueError(f"server_type must name the role (ps, worker, ...), got {server_type!r}")
    _state.update(server_type=str(server_type), index=index, client=client)
    for signo in SIGNALS:
        current = signal.getsignal(signo)
        if current is not _handler:
            _previous[signo] = current
            signal.signal(signo, _handler)
    if not _state["registered"]:
        atexit.register(emit_exit_metric)
        _state["registered"] = True
