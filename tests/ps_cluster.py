"""Start real `monolith ps` shard processes for tests and wait for their readiness lines."""
from __future__ import annotations

import re
import subprocess
import time

from ps.kernels.threads import ENV as KERNEL_THREADS_ENV
from services.malloc_tuning import ENV as MALLOC_ENV
from services.ports import free_port
from tests.processes import ProcessGroup

_READY = re.compile(r"ready: ps shard (\d+) of (\d+) serving on [\d.]+:(\d+) \(model=(\w+), metrics=([^,]+),")


class Shard:
    def __init__(self, proc: subprocess.Popen, port: int, metrics: str) -> None:
        self.proc, self.port, self.metrics = proc, port, metrics

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_shard(group: ProcessGroup, index: int, num_shards: int, port: int | None = None,
                checkpoint_dir: str | None = None, extra: list[str] | None = None) -> subprocess.Popen:
    args = ["-m", "launch.cli", "ps", "--port", str(port or free_port()), "--shard-index", str(index),
            "--num-shards", str(num_shards), "--grace-s", "2", *(extra or [])]
    if checkpoint_dir:
        args += ["--checkpoint-dir", checkpoint_dir]
    return group.start(args, env=dict(MALLOC_ENV, **KERNEL_THREADS_ENV), name=f"ps{index}of{num_shards}")


def wait_ready(group: ProcessGroup, proc: subprocess.Popen, timeout: float = 120) -> Shard:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = _READY.search(group.log_of(proc))
        if m:
            return Shard(proc, int(m.group(3)), m.group(5))
        if proc.poll() is not None:
            raise RuntimeError(f"PS exited with {proc.returncode}:\n{group.log_of(proc)}")
        time.sleep(0.05)
    raise TimeoutError(f"PS not ready after {timeout}s:\n{group.log_of(proc)}")


def start_cluster(group: ProcessGroup, num_shards: int, checkpoint_dir: str | None = None,
                  extra: list[str] | None = None) -> list[Shard]:
    """All shards start at once (imports overlap), then each is awaited."""
    procs = [start_shard(group, i, num_shards, checkpoint_dir=checkpoint_dir, extra=extra) for i in range(num_shards)]
    return [wait_ready(group, p) for p in procs]
