"""`monolith run` lifecycle without the PS or worker code: config errors, bounded waits, job-status joins.

The "worker" here is the real job-status server a worker's launcher runs (launch.job_status),
driven from the test so the data-service processes' reaction to each worker state can be observed.
"""
from __future__ import annotations

import json
import signal
import time

import pytest

from launch.job_status import JobWatcher, StatusServer, query_status
from services.ports import free_port
from tests.processes import wait_for


def hand_made_env(roles: dict[str, list[int]], role: str, index: int) -> dict[str, str]:
    """MLP_* variables written out the way a scheduler would (loopback hosts)."""
    env = {"MLP_ROLE": role.upper(), "MLP_ROLE_INDEX": str(index), "MLP_PORT": str(roles[role][index]),
           "YARN_INET_ADDR": "127.0.0.1"}
    for name, ports in roles.items():
        env[f"MLP_{name.upper()}_NUM"] = str(len(ports))
        for i, port in enumerate(ports):
            env[f"MLP_{name.upper()}_{i}_PRIMARY_HOST"] = "127.0.0.1"
            env[f"MLP_{name.upper()}_{i}_PORT"] = str(port)
    return env


RUN = ["-m", "launch.cli", "run", "--bind-host", "127.0.0.1", "--poll-interval", "0.2"]


def test_missing_variable_is_named_and_exit_status_is_2(processes):
    env = hand_made_env({"ps": [free_port()], "worker": [free_port()]}, "worker", 0)
    del env["MLP_PS_0_PRIMARY_HOST"]
    proc = processes.start(RUN + ["--model", "m:M", "--model-dir", "/tmp/x"], env=env, name="bad-env")
    assert proc.wait(60) == 2
    assert "MLP_PS_0_PRIMARY_HOST is not set" in processes.log_of(proc)


def test_worker_needs_a_model(processes):
    env = hand_made_env({"worker": [free_port()]}, "worker", 0)
    proc = processes.start(RUN, env=env, name="no-model")
    assert proc.wait(60) == 2
    assert "the worker role needs --model and --model-dir" in processes.log_of(proc)


def test_worker_gives_up_on_an_absent_ps_with_a_clear_error(processes):
    ps_port = free_port()
    env = hand_made_env({"ps": [ps_port], "worker": [free_port()]}, "worker", 0)
    t0 = time.monotonic()
    proc = processes.start(RUN + ["--model", "m:M", "--model-dir", "/tmp/x", "--wait-timeout", "1.5"],
                           env=env, name="no-ps")
    assert proc.wait(60) == 3
    assert time.monotonic() - t0 < 30
    log = processes.log_of(proc)
    assert f"ps:0 at 127.0.0.1:{ps_port} did not accept connections within 1.5s" in log


def test_tf_config_is_the_second_source(processes):
    """No MLP_ROLE: the role comes from TF_CONFIG (a chief task is worker 0)."""
    ps_port, chief_port = free_port(), free_port()
    tf_config = {"cluster": {"chief": [f"127.0.0.1:{chief_port}"], "ps": [f"127.0.0.1:{ps_port}"]},
                 "task": {"type": "chief", "index": 0}}
    proc = processes.start(RUN + ["--model", "m:M", "--model-dir", "/tmp/x", "--wait-timeout", "0.5"],
                           env={"TF_CONFIG": json.dumps(tf_config)}, name="tf-config")
    assert proc.wait(60) == 3
    log = processes.log_of(proc)
    assert "worker:0 (TF_CONFIG)" in log
    assert f"ps:0 at 127.0.0.1:{ps_port} did not accept connections within 0.5s (from TF_CONFIG)" in log


def test_status_server_and_watcher():
    port = free_port()
    server = StatusServer(port, "127.0.0.1")
    try:
        watcher = JobWatcher([f"127.0.0.1:{port}"])
        assert query_status(f"127.0.0.1:{port}") == "waiting"
        assert not watcher.poll()
        server.state = "running"
        assert not watcher.poll() and watcher.states[f"127.0.0.1:{port}"] == "running"
        server.state = "exited 1"
        assert not watcher.poll()
        server.state = "exited 0"
        assert watcher.poll()
        assert watcher.summary() == "worker:0=exited 0"
    finally:
        server.close()
    assert query_status(f"127.0.0.1:{port}") is None


def test_status_over_ipv6():
    try:
        port = free_port("::1")
        server = StatusServer(port, "::")
    except OSError as exc:
        pytest.skip(f"IPv6 is not configured on this machine: {exc}")
    try:
        server.state = "exited 0"
        assert JobWatcher([f"[::1]:{port}"]).poll()
    finally:
        server.close()


def test_vanished_worker_is_waited_for_not_counted_as_done():
    port = free_port()
    server = StatusServer(port, "127.0.0.1")
    server.state = "running"
    watcher = JobWatcher([f"127.0.0.1:{port}"])
    assert not watcher.poll()
    server.close()
    assert not watcher.poll()
    assert watcher.states[f"127.0.0.1:{port}"] == "gone after running"
    server = StatusServer(port, "127.0.0.1")  # the scheduler restarted it
    server.state = "exited 0"
    try:
        assert watcher.poll()
    finally:
        server.close()


@pytest.mark.slow
def test_data_service_roles_stop_when_every_worker_reports_success_or_on_sigterm(processes):
    roles = {"worker": [free_port(), free_port()], "dispatcher": [free_port()], "dsworker": [free_port()]}
    workers = [StatusServer(p, "127.0.0.1") for p in roles["worker"]]
    try:
        for w in workers:
            w.state = "running"
        dispatcher = processes.start(RUN, env=hand_made_env(roles, "dispatcher", 0), name="dispatcher")
        dsworker = processes.start(RUN, env=hand_made_env(roles, "dsworker", 0), name="dsworker")
        for proc in (dispatcher, dsworker):
            wait_for(lambda p=proc: "ready" in processes.log_of(p) or p.poll() is not None, 90, what="ready")
            assert proc.poll() is None, processes.log_of(proc)
        assert processes.stop(dsworker, signal.SIGTERM) == 0  # SIGTERM: clean stop
        assert "dsworker:0 stopped" in processes.log_of(dsworker)
        workers[0].state = "exited 0"
        time.sleep(1.0)
        assert dispatcher.poll() is None, "stopped while worker:1 was still running"
        workers[1].state = "exited 0"
        assert dispatcher.wait(30) == 0, processes.log_of(dispatcher)
        assert "every worker finished" in processes.log_of(dispatcher)
    finally:
        for w in workers:
            w.close()


def test_local_cluster_members_import_from_the_current_directory_and_share_a_launch_id(tmp_path, monkeypatch):
    """`monolith local` makes the current directory importable in every process (even with
    PYTHONSAFEPATH, which stops `python -m` from doing it), and gives them one launch id."""
    import os
    import subprocess
    import sys

    from launch.local_cluster import child_environment
    from services.cluster_spec import LAUNCH_ID_VAR

    (tmp_path / "users_model.py").write_text("NAME = 'found'\n")
    monkeypatch.chdir(tmp_path)
    env = child_environment({"PYTHONPATH": "/elsewhere", "PYTHONSAFEPATH": "1", "PATH": os.environ["PATH"]},
                            {"MLP_ROLE": "WORKER"}, "launch-1")
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/elsewhere"]
    assert env[LAUNCH_ID_VAR] == "launch-1" and env["MLP_ROLE"] == "WORKER"
    done = subprocess.run([sys.executable, "-c", "import users_model; print(users_model.NAME)"], cwd="/",
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "found", done.stderr
