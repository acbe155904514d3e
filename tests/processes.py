"""Child processes for multi-process tests: started with a deadline, always stopped.

Every process a test starts goes through `ProcessGroup`, whose `close()` sends SIGTERM, waits, then
SIGKILLs the whole process group, so no test leaves an orphan behind even when it fails. If pytest itself
dies (killed, or SIGTERM, which skips fixture teardown), the kernel sends each child SIGTERM: a one-line
launcher asks for that with `launch.supervision.die_with_parent` and then execs the command (same pid; the
request survives exec). The request follows the thread that started the child, so tests start processes
from the main thread.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from launch.supervision import PARENT_ENV

REPO = Path(__file__).resolve().parent.parent
_LAUNCHER = ("import os, sys; from launch.supervision import die_with_parent; die_with_parent(); "
             "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


class ProcessGroup:
    def __init__(self) -> None:
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def start(self, args: list[str], env: dict[str, str] | None = None, name: str = "proc") -> subprocess.Popen:
        """Start `python <args>` in its own session, output captured to a temp log file."""
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONPATH", str(REPO))
        full_env.update(env or {})
        full_env[PARENT_ENV] = str(os.getpid())
        log = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER, *args],
                cwd=REPO, env=full_env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.procs.append((proc, log))
        return proc

    def log_of(self, proc: subprocess.Popen) -> str:
        for p, log in self.procs:
            if p is proc:
                return log.read_text(errors="replace")
        raise KeyError(proc)

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        return proc.returncode

    def close(self, tail_lines: int = 60) -> None:
        """Stop everything; print each log's tail to stderr (pytest shows it when the test failed)."""
        for proc, _log in self.procs:
            self.stop(proc)
        for proc, log in self.procs:
            lines = log.read_text(errors="replace").splitlines()[-tail_lines:]
            sys.stderr.write(f"--- last {len(lines)} lines of {log.name} (pid {proc.pid}, exit {proc.returncode})\n")
            sys.stderr.write("\n".join(lines) + "\n")
            log.unlink(missing_ok=True)
        self.procs.clear()


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
