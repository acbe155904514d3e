"""Start `monolith serve` / `monolith serve-ps` processes for tests and wait for their readiness lines."""
from __future__ import annotations

import re
import subprocess
import time

from tests.processes import ProcessGroup

_SERVE_READY = re.compile(r"ready: serving model \S+ version \d+ on [\d.]+:(\d+)")
_PS_READY = re.compile(r"ready: serving ps shard \d+ of \d+ \(.*\) on [\d.]+:(\d+)")


_METRICS = re.compile(r"ready: serving model .* \(metrics=([\d.]+:\d+)\)")


def metrics_address(group: ProcessGroup, proc: subprocess.Popen) -> str:
    """host:port of a ready `monolith serve`'s Prometheus endpoint (from its readiness line)."""
    m = _METRICS.search(group.log_of(proc))
    if m is None:
        raise RuntimeError(f"no metrics address in the log:\n{group.log_of(proc)[-2000:]}")
    return m.group(1)


def start_serve(group: ProcessGroup, export_base: str, *extra: str) -> subprocess.Popen:
    return group.start(["-m", "launch.cli", "serve", "--export-base", export_base, "--port", "0", "--poll-s", "0.2",
                        "--grace-s", "2", *extra], name="serve")


def start_serve_ps(group: ProcessGroup, export_dir: str, *extra: str) -> subprocess.Popen:
    return group.start(["-m", "launch.cli", "serve-ps", "--export-dir", export_dir, "--port", "0", "--grace-s", "1",
                        *extra], name="serve-ps")


def wait_address(group: ProcessGroup, proc: subprocess.Popen, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = group.log_of(proc)
        m = _SERVE_READY.search(text) or _PS_READY.search(text)
        if m:
            return f"127.0.0.1:{m.group(1)}"
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{text[-4000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"not ready after {timeout}s:\n{group.log_of(proc)[-4000:]}")
