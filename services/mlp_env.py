"""The job description a YARN/Kubernetes-style scheduler injects as `MLP_*` environment variables.

A scheduler tells every process its role (`MLP_ROLE`, `MLP_ROLE_INDEX`, `MLP_PORT`) and where all the
others live (`MLP_<ROLE>_NUM`, `MLP_<ROLE>_<i>_HOST`, `MLP_<ROLE>_<i>_PORT`, ...). Under `mpirun` the
workers share one entry and learn their index from `OMPI_COMM_WORLD_*` instead.

Deliberate departures from the original `mlp_utils.MLPEnv`: `get_port` returns an `int` (the original
returned the raw string, and raised `TypeError` in MPI mode), resolves the process's own index for its
own role as `get_addr` does, and IPv6 hosts are bracketed in `host:port` addresses. Malformed numbers
raise `MLPEnvError` naming the variable.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
import traceback
from collections.abc import Mapping
from typing import overload

log = logging.getLogger(__name__)

DEFAULT_PORT = 2222
DEFAULT_DISPATCHER_TARGET = "grpc://localhost:5050"


class MLPEnvError(ValueError):
    """A missing or malformed `MLP_*`/`OMPI_*`/`TF_CONFIG` variable; the message names it."""


def check_port(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a TCP connection to `host:port` opens within `timeout` seconds.

    Refused connections are retried until the budget is spent, so a server that is still starting
    counts as up if it binds in time. IPv6 hosts (with or without brackets) use an IPv6 socket.
    """
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(remaining)
            try:
                sock.connect((bare, int(port)))
                return True
            except TimeoutError:
                return False
            except OSError:
                pass
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def format_addr(host: str, port: int | str) -> str:
    """`host:port`, with IPv6 literals bracketed so the port stays unambiguous."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def split_addr(addr: str, what: str = "address") -> tuple[str, int]:
    """Inverse of `format_addr`; `what` names the source in the error."""
    host, sep, port = addr.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MLPEnvError(f"{what}={addr!r} is not a host:port address")
    return host.strip("[]"), int(port)


def get_local_host(environ: Mapping[str, str] | None = None) -> str:
    """This machine's address as the scheduler sees it (`CLOUDNATIVE_INET_ADDR`, `YARN_INET_ADDR`, DNS)."""
    environ = os.environ if environ is None else environ
    cloud = environ.get("CLOUDNATIVE_INET_ADDR", "").strip()
    if cloud:
        return cloud.split(",")[0].strip()
    yarn = environ.get("YARN_INET_ADDR", "").strip()
    if yarn:
        return yarn
    name = socket.gethostname()
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return str(socket.getaddrinfo(name, None, family)[0][4][0])
        except (socket.gaierror, IndexError):
            continue
    raise MLPEnvError(f"cannot resolve this host's address: set CLOUDNATIVE_INET_ADDR or YARN_INET_ADDR ({name=})")


def _int(name: str, raw: str, expected: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise MLPEnvError(f"{name}={raw!r} is not an integer (expected {expected})") from None


class MLPEnv:
    """Read-only view of the `MLP_*`/`MPI_*` variables of one process (pass `environ` to test)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = dict(os.environ if environ is None else environ)
        self._environ = environ
        self._mlp_env = {k: v for k, v in environ.items() if k.startswith(("MLP_", "MPI_"))}
        self.framework = self._get("MLP_FRAMEWORK")
        self.ssh_port = self._get_int("MLP_SSH_PORT", None, "the ssh port")
        self.log_path = self._get("MLP_LOG_PATH")
        self.debug_port = self._get_int("MLP_DEBUG_PORT", None, "the debug port")
        self.entrypoint_dir = self._get("MLP_ENTRYPOINT_DIR")
        self.task_cmd = self._get("MLP_TASK_CMD")
        self.role = (self._get("MLP_ROLE") or "").upper()
        self.all_roles: dict[str, int] = {}
        for key in self._mlp_env:
            parts = key.split("_")
            if key.endswith("_NUM") and len(parts) == 3:
                self.all_roles[parts[1]] = self._get_int(key, 0, "a replica count")
        if self.enable_mpi:
            self.index = self._ompi("OMPI_COMM_WORLD_RANK", 0)
            self.all_roles["WORKER"] = self._ompi("OMPI_COMM_WORLD_SIZE", 1)
            self.port = self._get_int("MLP_PORT", 0, "a TCP port") + self.index
        else:
            self.index = self._get_int("MLP_ROLE_INDEX", 0, "this process's index within its role")
            self.port = self._get_int("MLP_PORT", 0, "a TCP port")
        self.cpu = self._get_int("MLP_CPU", 0, "a CPU count")
        self.gpu = self._get_int("MLP_GPU", 0, "a GPU count")
        self.gpu_type = self._get("MLP_GPU_TYPE", "")
        self.mem = self._get_int("MLP_MEM", 0, "a memory size")
        self.host = get_local_host(environ)

    @property
    def enable_mpi(self) -> bool:
        """Workers launched by `mpirun` (rank in `OMPI_COMM_WORLD_RANK`) share one MLP worker entry."""
        return "OMPI_COMM_WORLD_RANK" in self._environ and self.role == "WORKER"

    @property
    def available(self) -> bool:
        """True when this process was started by an MLP scheduler (some MLP vars and at least one role)."""
        return bool(self._mlp_env) and bool(self.all_roles)

    avaiable = available  # the original's spelling

    def _get(self, name: str, default: str | None = None) -> str | None:
        value = self._mlp_env.get(name)
        if value is None:
            return default
        value = value.strip().strip("\"'").strip()
        return value if value else default

    @overload
    def _get_int(self, name: str, default: int, expected: str) -> int: ...

    @overload
    def _get_int(self, name: str, default: None, expected: str) -> int | None: ...

    def _get_int(self, name: str, default: int | None, expected: str) -> int | None:
        raw = self._get(name)
        return default if raw is None else _int(name, raw, expected)

    def _ompi(self, name: str, default: int) -> int:
        raw = self._environ.get(name, "").strip()
        return _int(name, raw, "an MPI rank/size") if raw else default

    def _role(self, role: str | None) -> str:
        return (role or self.role).upper()

    def _is_mpi_worker(self, role: str) -> bool:
        return self.enable_mpi and role == "WORKER"

    def _index(self, role: str, index: int | None) -> int:
        if index is not None:
            return int(index)
        return self.index if role == self.role else 0

    def num_replicas(self, role: str | None = None) -> int:
        role = self._role(role)
        if self._is_mpi_worker(role):
            return self._ompi("OMPI_COMM_WORLD_SIZE", 1)
        return self._get_int(f"MLP_{role}_NUM", 0, "a replica count")

    def get_all_host(self, role: str | None = None, is_primary: bool = True) -> str | None:
        """The raw comma-separated host list of `role` (not split, as in the original)."""
        role = self._role(role)
        return self._get(f"MLP_{role}_ALL_PRIMARY_HOSTS" if is_primary else f"MLP_{role}_ALL_HOSTS")

    def get_all_addrs(self, role: str | None = None, is_primary: bool = True) -> list[str]:
        role = self._role(role)
        raw = self._get(f"MLP_{role}_ALL_PRIMARY_ADDRS" if is_primary else f"MLP_{role}_ALL_ADDRS")
        return [a.strip() for a in raw.split(",") if a.strip()] if raw else []

    def host_var(self, role: str | None = None, index: int | None = None, is_primary: bool = True) -> str:
        """Name of the variable `get_host` reads (for error messages)."""
        role = self._role(role)
        i = self._index(role, index)
        if self._is_mpi_worker(role):
            i //= max(1, self._ompi("OMPI_COMM_WORLD_LOCAL_SIZE", 1))
        return f"MLP_{role}_{i}_PRIMARY_HOST" if is_primary else f"MLP_{role}_{i}_HOST"

    def port_var(self, role: str | None = None, index: int | None = None) -> str:
        """Name of the variable `get_port` reads (MPI workers all read worker 0's port)."""
        role = self._role(role)
        if self._is_mpi_worker(role):
            return "MLP_WORKER_0_PORT"
        return f"MLP_{role}_{self._index(role, index)}_PORT"

    def get_host(self, role: str | None = None, index: int | None = None, is_primary: bool = True) -> str | None:
        return self._get(self.host_var(role, index, is_primary))

    @overload
    def _port(self, role: str, index: int | None, default: int) -> int: ...

    @overload
    def _port(self, role: str, index: int | None, default: None) -> int | None: ...

    def _port(self, role: str, index: int | None, default: int | None) -> int | None:
        name = self.port_var(role, index)
        base = self._get_int(name, default, "a TCP port")
        if base is None:
            return None
        return base + self._index(role, index) if self._is_mpi_worker(role) else base

    def get_port(self, role: str | None = None, index: int | None = None) -> int:
        """The port of `role`'s replica `index` (default 2222 when unset), as an int."""
        return self._port(self._role(role), index, DEFAULT_PORT)

    def get_addr(self, role: str | None = None, index: int | None = None, is_primary: bool = True) -> str | None:
        """`host:port` of `role`'s replica `index`, or None if its host or port variable is unset."""
        role = self._role(role)
        host = self.get_host(role, index, is_primary)
        port = self._port(role, index, None)
        if host is None or port is None:
            return None
        return format_addr(host, port)

    def dispatcher_addr(self, role: str | None = None) -> str | None:
        """`host:port` of replica 0 of `role` (default the dispatcher; any case), as the original takes it."""
        return self.get_addr((role or "dispatcher").upper())

    def dispatcher_target(self, role: str | None = None) -> str:
        """The tf.data service target (`grpc://host:port`) of `role` (default the job's dispatcher)."""
        addr = self.dispatcher_addr(role)
        return f"grpc://{addr}" if addr else DEFAULT_DISPATCHER_TARGET

    @property
    def queue_device(self) -> str:
        if "PS" in self.all_roles:
            return "/job:ps/task:0/device:CPU:0"
        if "WORKER" in self.all_roles:
            return "/job:worker/task:0/device:CPU:0"
        return "/device:CPU:0"

    def start_profiler(self, port: int = 6666) -> int:
        """Start TensorFlow's profiler server in this process on `port` (+ the MPI rank under `mpirun`, so
        ranks sharing a host do not collide); return the port. `profiler_trace` captures from it."""
        import tensorflow as tf

        port = int(port) + (self.index if self.enable_mpi else 0)
        tf.profiler.experimental.server.start(port)
        log.info("profiler server on port %d", port)
        return port

    def profiler_trace(
        self, logdir: str, role: str | None = None, index: int = -1, port: int = 6666, duration_ms: int = 1000,
        num_tracing_attempts: int = 3, host_tracer_level: int = 2, python_tracer_level: int = 0,
        device_tracer_level: int = 1, delay_ms: int | None = None,
    ) -> None:
        """Capture a profile of `role:index` (every replica of the role when `index < 0`) into `logdir`.

        The targets are the role's hosts with the profiler `port` (what `start_profiler` bound there)."""
        import tensorflow as tf

        role = self._role(role)
        indices = range(self.num_replicas(role)) if index < 0 else [index]
        targets = []
        for i in indices:
            host = self.get_host(role, i)
            if host is None:
                raise MLPEnvError(f"{self.host_var(role, i)} is not set: cannot profile {role.lower()}:{i}")
            offset = i if self._is_mpi_worker(role) else 0
            targets.append(f"grpc://{format_addr(host, int(port) + offset)}")
        options = tf.profiler.experimental.ProfilerOptions(
            host_tracer_level=host_tracer_level, python_tracer_level=python_tracer_level,
            device_tracer_level=device_tracer_level, delay_ms=delay_ms)
        tf.profiler.experimental.client.trace(",".join(targets), logdir, duration_ms,
                                              num_tracing_attempts=num_tracing_attempts, options=options)

    def _target(self, role: str | None, index: int, use_ssh: bool) -> tuple[str, int]:
        role = self._role(role)
        host = self.get_host(role, index)
        if host is None:
            raise MLPEnvError(f"{self.host_var(role, index)} is not set: cannot find {role.lower()}:{index}")
        if use_ssh:
            if self.ssh_port is None:
                raise MLPEnvError("MLP_SSH_PORT is not set (needed to wait with use_ssh=True)")
            return host, self.ssh_port
        return host, self.get_port(role, index)

    def wait(
        self, role: str | None = None, index: int = 0, timeout: float = -1, use_ssh: bool = True,
        interval: float = 5.0,
    ) -> bool:
        """Poll until `role:index` accepts connections; False once `timeout` (> 0) seconds have passed."""
        host, port = self._target(role, index, use_ssh)
        start = time.monotonic()
        while not check_port(host, port):
            if timeout > 0 and time.monotonic() - start >= timeout:
                return False
            log.info("waiting for %s:%d at %s", self._role(role).lower(), index, format_addr(host, port))
            time.sleep(interval)
        return True

    def join(
        self, role: str = "worker", index: int = 0, use_ssh: bool = True, interval: float = 10.0,
        check_timeout: float = 60.0, exit_process: bool = True,
    ) -> None:
        """Wait for `role:index` to come up, then for it to go away; then exit (the original's semantics).

        Processes that have nothing to do once the job is over (PS, dispatcher) call this so they end
        when the chief does. `exit_process=False` returns instead of calling `os._exit(0)`.
        """
        self.wait(role, index, use_ssh=use_ssh, interval=interval)
        host, port = self._target(role, index, use_ssh)
        while check_port(host, port, timeout=check_timeout):
            time.sleep(interval)
        log.info("%s:%d at %s is gone: the job is over", self._role(role).lower(), index, format_addr(host, port))
        if exit_process:
            logging.shutdown()
            os._exit(0)


def add_mpi_exception_hook(environ: Mapping[str, str] | None = None) -> bool:
    """Under `mpirun`, make an uncaught exception abort the whole MPI job instead of hanging the rest.

    Uses `mpi4py`'s `COMM_WORLD.Abort(1)` when installed; otherwise exits with status 1, which makes
    `mpirun` terminate the other ranks. Returns whether the hook was installed.
    """
    environ = os.environ if environ is None else environ
    if "OMPI_COMM_WORLD_RANK" not in environ:
        return False
    rank = environ["OMPI_COMM_WORLD_RANK"]

    def hook(exc_type, exc, tb) -> None:
        sys.stderr.write(f"uncaught exception on MPI rank {rank}; aborting the job\n")
        sys.stderr.write("".join(traceback.format_exception(exc_type, exc, tb)))
        sys.stderr.flush()
        try:
            from mpi4py import MPI  # optional: only present on MPI clusters
        except ImportError:
            os._exit(1)
        MPI.COMM_WORLD.Abort(1)

    sys.excepthook = hook
    return True
