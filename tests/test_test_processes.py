"""The test harness's own promise: a process a test started does not outlive a pytest that was killed."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.processes import REPO, wait_for

# A stand-in for pytest: starts a long sleeper through ProcessGroup, prints its pid, then dies by SIGKILL
# (no teardown runs), as a CI runner's kill would.
_KILLED_PARENT = """
import os, signal, sys, time
from tests.processes import ProcessGroup
proc = ProcessGroup().start(["-c", "import time; time.sleep(120)"], name="sleeper")
time.sleep(0.5)
print(proc.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_a_child_dies_with_a_killed_pytest():
    parent = subprocess.run([sys.executable, "-c", _KILLED_PARENT], cwd=REPO, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert parent.returncode == -9, parent.stderr
    child = int(parent.stdout.split()[0])
    try:
        wait_for(lambda: not _alive(child), timeout=10, what=f"child {child} to stop")
    finally:
        if _alive(child):
            os.kill(child, 9)
