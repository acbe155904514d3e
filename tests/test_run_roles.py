"""A whole job from hand-made MLP_* environments: 2 PS, 2 workers, a dispatcher and 2 data workers (plus
an extra one on worker 1's host), each a separate `monolith run` process, train the FFM test model to
completion and all exit 0."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from services.ports import free_port
from tests import cluster_parts
from tests.test_launch_lifecycle import RUN, hand_made_env

cluster_parts.require()

pytestmark = pytest.mark.slow

MODEL = "worker.models.ffm:TestFFMModel"
STEPS = 20


def test_full_job_from_mlp_environments_trains_and_every_process_exits_0(processes, tmp_path):
    roles = {"ps": [free_port(), free_port()], "worker": [free_port(), free_port()],
             "dispatcher": [free_port()], "dsworker": [free_port(), free_port()]}
    model_dir = tmp_path / "model"
    summary = tmp_path / "summary.json"
    procs = {}
    for role in ("ps", "dispatcher", "dsworker", "worker"):
        for i in range(len(roles[role])):
            args = RUN + ["--model", MODEL, "--model-dir", str(model_dir), "--max-steps", str(STEPS),
                          "--wait-timeout", "120"]
            if (role, i) == ("worker", 1):
                args += ["--extra-dsworkers", "1"]
            if (role, i) == ("worker", 0):
                args += ["--", "--summary-file", str(summary)]
            procs[(role, i)] = processes.start(args, env=hand_made_env(roles, role, i), name=f"{role}{i}")
    for key in sorted(procs, key=lambda k: k[0] != "worker"):  # workers first, then the services they end
        code = procs[key].wait(240)
        assert code == 0, f"{key} exited {code}:\n{processes.log_of(procs[key])}"
    dispatcher = f"grpc://127.0.0.1:{roles['dispatcher'][0]}"
    for i in range(2):
        log = processes.log_of(procs[("worker", i)])
        assert "training finished" in log and f"--dispatcher {dispatcher}" in log
    # worker 1 may find the shared global step already at STEPS; the chief always trains
    chief_log = processes.log_of(procs[("worker", 0)])
    assert f"reading train input from the tf.data service {dispatcher}" in chief_log, chief_log
    result = json.loads(summary.read_text())  # written by the chief
    assert result["global_step"] >= STEPS and result["num_ps"] == 2 and result["num_workers"] == 2, result
    assert result["checkpoint"] and Path(result["checkpoint"]).exists(), result
    for key in [k for k in procs if k[0] != "worker"]:
        assert "every worker finished" in processes.log_of(procs[key]), processes.log_of(procs[key])
    assert "started training as the chief" in processes.log_of(procs[("worker", 0)])
    assert re.search(r"\[dsworker:w1-0\] .*dsworker ready on 127\.0\.0\.1:\d+", processes.log_of(procs[("worker", 1)]))
