"""Child processes that never outlive their launcher, and stop in order: SIGTERM, a grace period, SIGKILL.

Every child is asked by the kernel (`PR_SET_PDEATHSIG`) to receive SIGTERM when its parent dies, so even
a SIGKILLed launcher leaves no orphan behind. A `monolith` child asks for it itself, first thing in
`launch.cli.main` (`die_with_parent`): Python code run between fork and exec (a `preexec_fn`) in a launcher
that already runs gRPC threads executes the at-fork handlers and ctypes' dlopen in the forked child, which
occasionally aborted it before it could exec.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

_PR_SET_PDEATHSIG = 1
PARENT_ENV = "MONOLITH_DIE_WITH_PARENT"  # the launcher's pid, for die_with_parent in the child


def _die_with_parent(parent: int) -> Callable[[], None]:
    def setup() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):  # not Linux: rely on explicit teardown
            return
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return setup


def die_with_parent() -> None:
    """In a child started by `spawn`: receive SIGTERM when the launcher dies (exit now if it already has)."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent:
        _die_with_parent(int(parent))()


def spawn(
    args: Sequence[str], env: dict[str, str] | None = None, new_session: bool = False, **popen_kwargs
) -> subprocess.Popen:
    """Start `args` (a `python -m ...` argv when it starts with `-m`) tied to this process's life."""
    argv = [sys.executable, *args] if args and args[0] == "-m" else list(args)
    if list(args[:2]) == ["-m", "launch.cli"]:  # the child calls die_with_parent itself: no code before exec
        child_env = dict(os.environ if env is None else env)
        child_env[PARENT_ENV] = str(os.getpid())
        return subprocess.Popen(argv, env=child_env, start_new_session=new_session, **popen_kwargs)
    return subprocess.Popen(
        argv, env=env, preexec_fn=_die_with_parent(os.getpid()), start_new_session=new_session, **popen_kwargs
    )


def monolith_command(*args: str) -> list[str]:
    """argv for a `monolith <subcommand>` child, run with this interpreter (works without the script)."""
    return ["-m", "launch.cli", *args]


def terminate(proc: subprocess.Popen, timeout: float = 20.0, group: bool = False) -> int:
    """SIGTERM `proc` (its whole process group if `group`), SIGKILL after `timeout`; returns its exit code."""
    if proc.poll() is None:
        _signal(proc, signal.SIGTERM, group)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL, group)
            proc.wait(10)
    if group:  # grandchildren that outlived their parent
        _signal(proc, signal.SIGKILL, True)
    return proc.returncode


def _signal(proc: subprocess.Popen, sig: int, group: bool) -> None:
    try:
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class SignalFlag:
    """Records SIGTERM/SIGINT/SIGHUP instead of dying, so the launcher can stop its child in order.

    Outside the main thread (where Python cannot install handlers) it only records what `set` is given.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Put back the handlers that were installed before."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def set(self, signum: int) -> None:
        self.received = signum

    def _handle(self, signum: int, _frame) -> None:
        self.set(signum)

    def __bool__(self) -> bool:
        return self.received is not None

    def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if a signal arrived meanwhile."""
        deadline = time.monotonic() + seconds
        while not self and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return bool(self)
