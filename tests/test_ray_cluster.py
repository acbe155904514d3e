"""`monolith ray` on a private local Ray: 2 PS actors + 1 worker actor train the FFM test model."""
from __future__ import annotations

import re

import pytest

from tests import cluster_parts

cluster_parts.require()

pytestmark = pytest.mark.slow


def test_ray_job_with_two_ps_and_one_worker(processes, tmp_path):
    summary = tmp_path / "summary.json"
    driver = processes.start(
        ["-m", "launch.cli", "ray", "--address", "local", "--num-cpus", "2", "--num-ps", "2", "--num-workers", "1",
         "--model", "worker.models.ffm:TestFFMModel", "--model-dir", str(tmp_path / "model"), "--max-steps", "20",
         "--", "--summary-file", str(summary)],
        name="ray-driver")
    code = driver.wait(240)
    log = processes.log_of(driver)
    assert code == 0, log
    assert "job finished: every actor's process exited 0" in log
    for role in ("[ps:0]", "[ps:1]", "[worker:0]"):
        assert role in log
    assert "started training as the chief" in log
    assert log.count("every worker finished") == 2
    assert summary.exists()


def test_ray_job_restarts_then_stops_and_names_the_failing_role(processes, tmp_path):
    """`--restart-failed 1`: the failing worker is started once more in its actor, then the job stops."""
    driver = processes.start(
        ["-m", "launch.cli", "ray", "--address", "local", "--num-cpus", "2", "--num-ps", "1", "--num-workers", "1",
         "--model", "worker.models.no_such_module:Model", "--model-dir", str(tmp_path / "model"), "--max-steps", "5",
         "--restart-failed", "1"],
        name="ray-driver")
    code = driver.wait(180)
    log = processes.log_of(driver)
    assert code == 1, log
    assert re.search(r"worker:0 failed \(exit code \d+\): restarting it \(restart 1 of 1 for worker\)", log), log
    assert re.search(r"worker:0 failed \(exit code \d+\): stopping the job", log), log
    assert log.count("started training") == 2, log
    assert "no_such_module" in log  # the worker's own error reached the driver's output
