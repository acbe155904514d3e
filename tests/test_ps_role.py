"""A PS shard under `monolith run`: readiness through the Health RPC probe, clean exit on SIGTERM, and the
exit hook's counter for that signal."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from services.ports import free_port
from tests import cluster_parts
from tests.processes import wait_for
from tests.scrape import Scrape
from tests.test_launch_lifecycle import RUN, hand_made_env

cluster_parts.require("ps.__main__", "ps.client.client")

pytestmark = pytest.mark.slow


def probe(addr: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.health_probe", "--ps", addr, "--timeout", "2"],
                          capture_output=True, text=True, timeout=60)


def test_ps_role_is_probed_ready_and_stops_cleanly_on_sigterm(processes, tmp_path):
    roles = {"ps": [free_port()], "worker": [free_port()]}
    addr = f"127.0.0.1:{roles['ps'][0]}"
    textfile = tmp_path / "ps0.prom"
    env = {**hand_made_env(roles, "ps", 0), "MONOLITH_METRICS_TEXTFILE": str(textfile)}
    ps = processes.start(RUN, env=env, name="ps-role")
    wait_for(lambda: "ready" in processes.log_of(ps) or ps.poll() is not None, 90, what="ps ready")
    assert ps.poll() is None, processes.log_of(ps)
    ok = probe(addr)
    assert ok.returncode == 0 and "is serving" in ok.stdout, ok.stdout + ok.stderr
    assert processes.stop(ps, signal.SIGTERM) == 0, processes.log_of(ps)
    assert "ps:0 stopped" in processes.log_of(ps)
    down = probe(addr)
    assert down.returncode == 1 and "not healthy" in down.stderr
    exported = Scrape(textfile.read_text())  # the exit hook counted the signal that stopped the role
    assert exported.value("monolith_training_exit_hook_total", server_type="ps", index="0", sig="15") == 1
