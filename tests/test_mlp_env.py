"""MLPEnv rules (docs/monolith-reference.md) with fixed environment maps, check_port over IPv4/IPv6,
ClusterSpec sources."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from services.cluster_spec import ClusterSpec, mlp_environment
from services.mlp_env import MLPEnv, MLPEnvError, add_mpi_exception_hook, check_port, get_local_host

JOB = {
    "MLP_FRAMEWORK": "tensorflow",
    "MLP_SSH_PORT": "9022",
    "MLP_LOG_PATH": "/logs",
    "MLP_DEBUG_PORT": "9100",
    "MLP_ENTRYPOINT_DIR": "/app",
    "MLP_TASK_CMD": "monolith run",
    "MLP_ROLE": "worker",
    "MLP_ROLE_INDEX": "1",
    "MLP_PORT": "7101",
    "MLP_CPU": "8",
    "MLP_GPU": "0",
    "MLP_GPU_TYPE": "none",
    "MLP_MEM": "16384",
    "MLP_PS_NUM": "2",
    "MLP_PS_0_HOST": "10.0.0.1",
    "MLP_PS_0_PRIMARY_HOST": "10.1.0.1",
    "MLP_PS_0_PORT": "7000",
    "MLP_PS_1_HOST": "10.0.0.2",
    "MLP_PS_1_PRIMARY_HOST": "10.1.0.2",
    "MLP_PS_1_PORT": "7001",
    "MLP_PS_ALL_HOSTS": "10.0.0.1,10.0.0.2",
    "MLP_PS_ALL_PRIMARY_HOSTS": "10.1.0.1,10.1.0.2",
    "MLP_PS_ALL_ADDRS": "10.0.0.1:7000, 10.0.0.2:7001",
    "MLP_PS_ALL_PRIMARY_ADDRS": "10.1.0.1:7000,10.1.0.2:7001",
    "MLP_WORKER_NUM": "2",
    "MLP_WORKER_0_PRIMARY_HOST": "10.1.0.3",
    "MLP_WORKER_0_PORT": "7100",
    "MLP_WORKER_1_PRIMARY_HOST": "10.1.0.4",
    "MLP_WORKER_1_PORT": "7101",
    "YARN_INET_ADDR": "10.1.0.4",
    "UNRELATED": "x",
}


def env_of(**overrides):
    env = dict(JOB)
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def test_fields_are_read_and_typed():
    e = MLPEnv(JOB)
    assert (e.framework, e.ssh_port, e.log_path, e.debug_port) == ("tensorflow", 9022, "/logs", 9100)
    assert (e.entrypoint_dir, e.task_cmd) == ("/app", "monolith run")
    assert (e.role, e.index, e.port) == ("WORKER", 1, 7101)
    assert (e.cpu, e.gpu, e.gpu_type, e.mem) == (8, 0, "none", 16384)
    assert e.host == "10.1.0.4"
    assert e.all_roles == {"PS": 2, "WORKER": 2}
    assert e.available and e.avaiable
    assert not e.enable_mpi


def test_only_mlp_and_mpi_variables_are_visible():
    e = MLPEnv(env_of(MPI_THING="1", TENSORBOARD_LOG_PATH="/tb"))
    assert e._get("MPI_THING") == "1"
    assert e._get("TENSORBOARD_LOG_PATH") is None
    assert e._get("UNRELATED", "d") == "d"


def test_quotes_and_whitespace_are_stripped_and_empty_means_default():
    e = MLPEnv(env_of(MLP_ROLE=' "ps" ', MLP_ROLE_INDEX="'0'", MLP_PORT='"7000"', MLP_FRAMEWORK="''"))
    assert (e.role, e.index, e.port) == ("PS", 0, 7000)
    assert e.framework is None


def test_defaults_when_unset():
    e = MLPEnv({"MLP_PS_NUM": "1", "YARN_INET_ADDR": "1.2.3.4"})
    assert (e.role, e.index, e.port, e.cpu, e.gpu, e.mem) == ("", 0, 0, 0, 0, 0)
    assert e.ssh_port is None and e.framework is None
    assert e.available


def test_not_available_without_roles():
    assert not MLPEnv({"MLP_ROLE": "worker"}).available
    assert not MLPEnv({}).available


def test_host_is_this_machine_even_without_mlp_variables():
    """As the original: `host` is `get_local_host()` whether or not a scheduler set anything."""
    assert MLPEnv({"YARN_INET_ADDR": "10.9.8.7"}).host == "10.9.8.7"
    assert MLPEnv({}).host == get_local_host({})
    assert MLPEnv({}).host


def test_gpu_type_is_an_empty_string_when_missing_or_empty():
    assert MLPEnv(env_of(MLP_GPU_TYPE=None)).gpu_type == ""
    assert MLPEnv(env_of(MLP_GPU_TYPE="")).gpu_type == ""
    assert MLPEnv(env_of(MLP_GPU_TYPE=" ")).gpu_type == ""
    assert MLPEnv(env_of(MLP_GPU_TYPE="A100")).gpu_type == "A100"


def test_all_roles_takes_only_three_part_num_keys():
    e = MLPEnv(env_of(MLP_DSWORKER_NUM="3", MLP_EXTRA_PS_NUM="9", MLP_NUM="4"))
    assert e.all_roles == {"PS": 2, "WORKER": 2, "DSWORKER": 3}


def test_malformed_numbers_name_the_variable():
    with pytest.raises(MLPEnvError, match=r"MLP_ROLE_INDEX='one' is not an integer"):
        MLPEnv(env_of(MLP_ROLE_INDEX="one"))
    with pytest.raises(MLPEnvError, match=r"MLP_PS_NUM='two'"):
        MLPEnv(env_of(MLP_PS_NUM="two"))
    with pytest.raises(MLPEnvError, match=r"MLP_PS_1_PORT='70x1'"):
        MLPEnv(env_of(MLP_PS_1_PORT="70x1")).get_port("ps", 1)
    with pytest.raises(MLPEnvError, match=r"OMPI_COMM_WORLD_RANK='a'"):
        MLPEnv(env_of(OMPI_COMM_WORLD_RANK="a"))


def test_num_replicas_and_all_hosts_and_addrs():
    e = MLPEnv(JOB)
    assert e.num_replicas("ps") == 2 and e.num_replicas() == 2 and e.num_replicas("dispatcher") == 0
    assert e.get_all_host("ps") == "10.1.0.1,10.1.0.2"
    assert e.get_all_host("ps", is_primary=False) == "10.0.0.1,10.0.0.2"
    assert e.get_all_addrs("ps") == ["10.1.0.1:7000", "10.1.0.2:7001"]
    assert e.get_all_addrs("ps", is_primary=False) == ["10.0.0.1:7000", "10.0.0.2:7001"]
    assert e.get_all_addrs("worker") == []


def test_host_port_addr_index_rules():
    e = MLPEnv(JOB)
    assert e.get_host("ps", 1) == "10.1.0.2" and e.get_host("ps", 1, is_primary=False) == "10.0.0.2"
    assert e.get_host("ps") == "10.1.0.1"  # other role: index 0
    assert e.get_host() == "10.1.0.4"  # own role: own index
    assert e.get_host("worker", is_primary=False) is None
    port = e.get_port("ps", 1)
    assert port == 7001 and isinstance(port, int)
    assert e.get_port() == 7101  # own role: own index
    assert e.get_port("dispatcher") == 2222
    assert e.get_addr("ps", 1) == "10.1.0.2:7001"
    assert e.get_addr() == "10.1.0.4:7101"
    assert e.get_addr("ps", 1, is_primary=False) == "10.0.0.2:7001"
    assert e.get_addr("dispatcher") is None


def test_ipv6_hosts_are_bracketed():
    e = MLPEnv(env_of(MLP_PS_0_PRIMARY_HOST="fd00::1"))
    assert e.get_addr("ps", 0) == "[fd00::1]:7000"


def test_dispatcher_target():
    assert MLPEnv(JOB).dispatcher_target() == "grpc://localhost:5050"
    e = MLPEnv(env_of(MLP_DISPATCHER_NUM="1", MLP_DISPATCHER_0_PRIMARY_HOST="10.1.0.9", MLP_DISPATCHER_0_PORT="5051"))
    assert e.dispatcher_addr() == "10.1.0.9:5051"
    assert e.dispatcher_target() == "grpc://10.1.0.9:5051"


def test_dispatcher_target_takes_the_role_in_any_case():
    e = MLPEnv(env_of(MLP_DISPATCHER_NUM="1", MLP_DISPATCHER_0_PRIMARY_HOST="10.1.0.9", MLP_DISPATCHER_0_PORT="5051",
                      MLP_DSWORKER_NUM="1", MLP_DSWORKER_0_PRIMARY_HOST="10.1.0.8", MLP_DSWORKER_0_PORT="5060"))
    for role in ("dispatcher", "DISPATCHER", "Dispatcher", None):
        assert e.dispatcher_target(role) == "grpc://10.1.0.9:5051"
        assert e.dispatcher_addr(role) == "10.1.0.9:5051"
    assert e.dispatcher_target("dsworker") == e.dispatcher_target("DSWorker") == "grpc://10.1.0.8:5060"
    assert e.dispatcher_target("ps") == "grpc://10.1.0.1:7000"
    assert MLPEnv(JOB).dispatcher_target("dispatcher") == "grpc://localhost:5050"


def test_mpi_mode_for_workers():
    mpi = env_of(MLP_ROLE_INDEX="0", MLP_PORT="7100", MLP_WORKER_NUM="1", OMPI_COMM_WORLD_RANK="3",
                 OMPI_COMM_WORLD_SIZE="4", OMPI_COMM_WORLD_LOCAL_SIZE="2")
    e = MLPEnv(mpi)
    assert e.enable_mpi
    assert (e.index, e.port) == (3, 7103)
    assert e.all_roles["WORKER"] == 4 and e.num_replicas("worker") == 4 and e.num_replicas() == 4
    assert e.get_port() == 7103 and e.get_port("worker", 2) == 7102
    assert e.get_host() == "10.1.0.4"  # rank 3 // local size 2 = host 1
    assert e.get_host("worker", 1) == "10.1.0.3"
    assert e.get_addr("worker", 2) == "10.1.0.4:7102"
    assert e.get_addr("ps", 1) == "10.1.0.2:7001"  # other roles are unaffected


def test_mpi_mode_only_for_the_worker_role():
    e = MLPEnv(env_of(MLP_ROLE="ps", MLP_ROLE_INDEX="1", MLP_PORT="7001", OMPI_COMM_WORLD_RANK="3"))
    assert not e.enable_mpi
    assert (e.index, e.port) == (1, 7001)
    assert e.all_roles["WORKER"] == 2


def test_queue_device():
    assert MLPEnv(JOB).queue_device == "/job:ps/task:0/device:CPU:0"
    assert MLPEnv(env_of(MLP_PS_NUM=None)).queue_device == "/job:worker/task:0/device:CPU:0"
    assert MLPEnv({"MLP_DISPATCHER_NUM": "1"}).queue_device == "/device:CPU:0"


def test_local_host_discovery():
    assert get_local_host({"CLOUDNATIVE_INET_ADDR": "1.2.3.4,5.6.7.8", "YARN_INET_ADDR": "9.9.9.9"}) == "1.2.3.4"
    assert get_local_host({"YARN_INET_ADDR": "1.2.3.4"}) == "1.2.3.4"
    assert get_local_host({})


def _listener(host: str):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen()
    return s


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_check_port_ipv4_and_ipv6(host):
    try:
        s = _listener(host)
    except OSError as exc:
        pytest.skip(f"{host} not configured on this machine: {exc}")
    port = s.getsockname()[1]
    try:
        assert check_port(host, port)
        if ":" in host:
            assert check_port(f"[{host}]", port)
    finally:
        s.close()
    t0 = time.monotonic()
    assert not check_port(host, port, timeout=0.3)
    assert 0.25 <= time.monotonic() - t0 < 2


def test_check_port_waits_for_a_server_that_starts_late():
    s = _listener("127.0.0.1")
    port = s.getsockname()[1]
    s.close()
    late = []
    timer = threading.Timer(0.3, lambda: late.append(_listener_on(port)))
    timer.start()
    try:
        assert check_port("127.0.0.1", port, timeout=5)
    finally:
        timer.join()
        for sock in late:
            sock.close()


def _listener_on(port: int):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def _local_job(port: int, **extra):
    return {"MLP_ROLE": "PS", "MLP_PS_NUM": "1", "MLP_PS_0_PRIMARY_HOST": "127.0.0.1", "MLP_PS_0_PORT": str(port),
            "MLP_WORKER_NUM": "1", "MLP_WORKER_0_PRIMARY_HOST": "127.0.0.1", "MLP_WORKER_0_PORT": str(port),
            "YARN_INET_ADDR": "127.0.0.1", **extra}


def test_wait_and_join_follow_the_port():
    s = _listener("127.0.0.1")
    port = s.getsockname()[1]
    e = MLPEnv(_local_job(port, MLP_SSH_PORT=str(port)))
    assert e.wait("ps", 0, timeout=1, interval=0.05)
    assert e.wait("ps", 0, timeout=1, use_ssh=False, interval=0.05)
    threading.Timer(0.3, s.close).start()
    t0 = time.monotonic()
    e.join("worker", 0, use_ssh=False, interval=0.05, check_timeout=0.1, exit_process=False)
    assert time.monotonic() - t0 >= 0.25
    assert not e.wait("ps", 0, timeout=0.2, use_ssh=False, interval=0.05)


def test_wait_names_missing_variables():
    e = MLPEnv(_local_job(1))
    with pytest.raises(MLPEnvError, match="MLP_SSH_PORT is not set"):
        e.wait("ps", 0, timeout=0.1)
    with pytest.raises(MLPEnvError, match="MLP_DISPATCHER_0_PRIMARY_HOST is not set"):
        e.wait("dispatcher", 0, timeout=0.1, use_ssh=False)


def test_mpi_exception_hook_aborts_with_status_1():
    assert not add_mpi_exception_hook({})
    code = "from services.mlp_env import add_mpi_exception_hook as h; assert h(); raise RuntimeError('boom')"
    env = {"OMPI_COMM_WORLD_RANK": "2", "PATH": "/usr/bin:/bin", "PYTHONPATH": sys.path[0] or "."}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "MPI rank 2" in out.stderr and "RuntimeError: boom" in out.stderr


# ---- ClusterSpec from either source -------------------------------------------------------------------

def test_cluster_spec_from_mlp_env():
    spec = ClusterSpec.from_environ(JOB)
    assert spec.roles == {"ps": ("10.1.0.1:7000", "10.1.0.2:7001"), "worker": ("10.1.0.3:7100", "10.1.0.4:7101")}
    assert (spec.task_type, spec.task_index, spec.bind_port, spec.name) == ("worker", 1, 7101, "worker:1")
    assert not spec.is_chief and spec.dispatcher_target() is None
    assert spec.own_address == "10.1.0.4:7101"


def test_cluster_spec_names_missing_mlp_variables():
    with pytest.raises(MLPEnvError, match="MLP_PS_1_PRIMARY_HOST is not set"):
        ClusterSpec.from_environ(env_of(MLP_PS_1_PRIMARY_HOST=None))
    with pytest.raises(MLPEnvError, match="MLP_WORKER_0_PORT is not set"):
        ClusterSpec.from_environ(env_of(MLP_WORKER_0_PORT=None))
    with pytest.raises(MLPEnvError, match="index 2 is out of range for role 'worker'"):
        ClusterSpec.from_environ(env_of(MLP_ROLE_INDEX="2"))
    with pytest.raises(MLPEnvError, match="role 'dispatcher' is not among"):
        ClusterSpec.from_environ(env_of(MLP_ROLE="dispatcher"))
    with pytest.raises(MLPEnvError, match="neither MLP_ROLE nor TF_CONFIG"):
        ClusterSpec.from_environ({})
    with pytest.raises(MLPEnvError, match="no MLP_<ROLE>_NUM"):
        ClusterSpec.from_environ({"MLP_ROLE": "ps"})


def test_cluster_spec_from_tf_config_folds_the_chief_into_worker_0():
    cfg = {"cluster": {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"], "ps": ["p0:2", "p1:2"]},
           "task": {"type": "worker", "index": 1}}
    spec = ClusterSpec.from_environ({"TF_CONFIG": json.dumps(cfg)})
    assert spec.addresses("worker") == ["h0:1", "h1:1", "h2:1"]
    assert (spec.task_type, spec.task_index, spec.bind_port) == ("worker", 2, 1)
    cfg["task"] = {"type": "chief", "index": 0}
    assert ClusterSpec.from_tf_config(cfg).is_chief
    cfg["task"] = {"type": "ps", "index": 1}
    assert ClusterSpec.from_tf_config(cfg).own_address == "p1:2"
    no_chief = {"cluster": {"worker": ["h1:1"], "ps": ["p0:2"]}, "task": {"type": "worker", "index": 0}}
    assert ClusterSpec.from_tf_config(no_chief).is_chief


def test_tf_config_errors_name_the_field():
    with pytest.raises(MLPEnvError, match="TF_CONFIG is not valid JSON"):
        ClusterSpec.from_tf_config("{nope")
    with pytest.raises(MLPEnvError, match="TF_CONFIG.cluster is missing"):
        ClusterSpec.from_tf_config({"task": {"type": "ps"}})
    with pytest.raises(MLPEnvError, match="TF_CONFIG.task"):
        ClusterSpec.from_tf_config({"cluster": {"ps": ["a:1"]}})
    with pytest.raises(MLPEnvError, match=r"TF_CONFIG: ps\[0\]='a' is not a host:port"):
        ClusterSpec.from_tf_config({"cluster": {"ps": ["a"]}, "task": {"type": "ps"}})
    with pytest.raises(MLPEnvError, match="TF_CONFIG.cluster.ps must be a list"):
        ClusterSpec.from_tf_config({"cluster": {"ps": "a:1"}, "task": {"type": "ps"}})
    with pytest.raises(MLPEnvError, match="TF_CONFIG.task.index='x'"):
        ClusterSpec.from_tf_config({"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": "x"}})


def test_mlp_environment_round_trips_through_mlp_env():
    roles = {"ps": [("127.0.0.1", 7000), ("127.0.0.1", 7001)], "worker": [("::1", 7100)],
             "dispatcher": [("127.0.0.1", 5050)]}
    env = mlp_environment(roles, "ps", 1)
    spec = ClusterSpec.from_environ(env)
    assert spec.roles == {"dispatcher": ("127.0.0.1:5050",), "ps": ("127.0.0.1:7000", "127.0.0.1:7001"),
                          "worker": ("[::1]:7100",)}
    assert (spec.name, spec.bind_port) == ("ps:1", 7001)
    assert spec.dispatcher_target() == "grpc://127.0.0.1:5050"
    assert ClusterSpec.from_tf_config(spec.to_tf_config()) == spec.__class__(
        spec.roles, "ps", 1, source="TF_CONFIG")


PROFILE_SCRIPT = r"""
import sys, threading
import tensorflow as tf
from services.mlp_env import MLPEnv
port, logdir = int(sys.argv[1]), sys.argv[2]
env = MLPEnv({"MLP_ROLE": "worker", "MLP_ROLE_INDEX": "0", "MLP_WORKER_NUM": "1",
              "MLP_WORKER_0_PRIMARY_HOST": "127.0.0.1", "MLP_WORKER_0_PORT": "2222"})
assert env.start_profiler(port) == port
stop = threading.Event()
def busy():
    x = tf.random.normal([64, 64])
    while not stop.is_set():
        x = tf.tanh(tf.matmul(x, x))
threading.Thread(target=busy, daemon=True).start()
env.profiler_trace(logdir, role="worker", index=-1, port=port, duration_ms=500)
stop.set()
"""


@pytest.mark.slow  # traces for seconds: left out of `make test-fast`
def test_profiler_server_and_trace_capture_a_real_profile(tmp_path):
    """`start_profiler` serves TF's profiler; `profiler_trace` of every worker writes an xplane profile."""
    from services.ports import free_port

    port = free_port()
    done = subprocess.run([sys.executable, "-c", PROFILE_SCRIPT, str(port), str(tmp_path)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(tmp_path.rglob("*.xplane.pb")), sorted(str(p) for p in tmp_path.rglob("*"))


def test_profiler_trace_of_an_unknown_replica_names_the_variable(tmp_path):
    env = MLPEnv({"MLP_ROLE": "worker", "MLP_WORKER_NUM": "1", "MLP_WORKER_0_HOST": "127.0.0.1"})
    with pytest.raises(MLPEnvError, match="MLP_WORKER_3_PRIMARY_HOST"):
        env.profiler_trace(str(tmp_path), role="worker", index=3)
