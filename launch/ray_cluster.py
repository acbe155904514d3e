"""`monolith ray`: the job's roles as Ray actors, on an existing Ray cluster or a local one.

Each actor owns one role: it reserves a port on its node, then runs `monolith run` there with the
`MLP_*` variables built from every actor's address — the same code path as a YARN or Kubernetes job.
So PS actors expose their gRPC address, workers receive the whole cluster spec, and the driver streams
every actor's output with role prefixes, stops the job on the first failure (naming the role) unless
`--restart-failed K` allows restarting it in its actor (`launch.restarts`), and kills all actors at the
end. Use a shared filesystem for `--model-dir` on a multi-node cluster.
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from launch.job_args import add_job_arguments, model_dir_of, role_counts, train_args_of
from launch.restarts import RestartPolicy
from launch.supervision import SignalFlag, describe_exit, monolith_command, spawn, terminate
from services import role_logging, transport_security
from services.cluster_spec import LAUNCH_ID_VAR, mlp_environment
from services.ports import free_port

log = logging.getLogger(__name__)

POLL_S = 0.5
SHUTDOWN_GRACE_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--address", default="local",
                        help="Ray cluster address ('local' starts a private one; 'auto' joins a running one)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    parser.add_argument("--cpus-per-role", type=float, default=0.0, help="CPUs each actor reserves in Ray")


def main(args: argparse.Namespace) -> int:
    role_logging.configure("ray-driver", 0)
    try:  # handed to every actor's process through its environment
        transport_security.from_args_exported(args)
    except transport_security.SecurityConfigError as exc:
        log.error("cannot start: %s", exc)
        return 2
    return run_ray_cluster(args.num_ps, args.num_workers, args.model, model_dir_of(args, "monolith-ray-"),
                           train_args_of(args), address=args.address, num_cpus=args.num_cpus,
                           cpus_per_role=args.cpus_per_role, dataservice=args.dataservice,
                           num_dsworkers=args.num_dsworkers, metrics=args.metrics,
                           restarts=RestartPolicy(args.restart_failed))


class RoleProcess:
    """Body of a role actor: one `monolith run` process on this actor's node, its output buffered."""

    def __init__(self, role: str, index: int) -> None:
        self.role, self.index = role, index
        self.proc: subprocess.Popen | None = None
        self.lines: collections.deque[str] = collections.deque()

    def reserve(self) -> tuple[str, int]:
        """This node's address and a port free on it, for the cluster spec."""
        import ray

        host = ray.util.get_node_ip_address()
        return host, free_port(host)

    def start(self, env: dict[str, str], run_args: list[str]) -> int:
        """Run `monolith run` here (again, after a failure: whatever the last one left behind is stopped)."""
        if self.proc is not None:
            terminate(self.proc, group=True)
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.proc = spawn(monolith_command("run", *run_args), env=full_env, new_session=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._pump, daemon=True).start()
        return self.proc.pid

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        stdout = self.proc.stdout
        for raw in iter(stdout.readline, b""):
            self.lines.append(raw.decode(errors="replace"))
        stdout.close()

    def poll(self) -> tuple[int | None, list[str]]:
        """(exit code or None while running, output lines since the last call)."""
        code = self.proc.poll() if self.proc else None
        out = [self.lines.popleft() for _ in range(len(self.lines))]
        return code, out

    def stop(self, timeout: float = SHUTDOWN_GRACE_S) -> int | None:
        if self.proc is None:
            return None
        return terminate(self.proc, timeout=timeout, group=True)


def _runtime_env() -> dict:
    """Actors import this checkout's code first, as the driver does (no-op for an installed package)."""
    root = str(Path(__file__).resolve().parents[1])
    paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}


def run_ray_cluster(
    num_ps: int,
    num_workers: int,
    model: str,
    model_dir: str,
    train_args=(),
    address: str = "local",
    num_cpus: int | None = None,
    cpus_per_role: float = 0.0,
    dataservice: bool = False,
    num_dsworkers: int = 2,
    out=None,
    metrics: bool = False,
    restarts: RestartPolicy | None = None,
) -> int:
    """Run the job as Ray actors; 0 when every worker trained and every service stopped cleanly. `restarts`
    (default: none) restarts failed role processes in their actors."""
    import ray

    restarts = RestartPolicy() if restarts is None else restarts
    out = sys.stdout if out is None else out
    counts = role_counts(num_ps, num_workers, dataservice, num_dsworkers)
    started_ray = not ray.is_initialized()
    if started_ray:
        init: dict[str, Any] = {"address": address, "include_dashboard": False, "runtime_env": _runtime_env(),
                "log_to_driver": False}
        if address == "local":
            init["num_cpus"] = num_cpus or os.cpu_count()
        ray.init(**init)
    actor_cls = ray.remote(RoleProcess)
    launch_id = uuid.uuid4().hex
    members: dict[tuple[str, int], Any] = {}
    launches: dict[tuple[str, int], tuple[dict[str, str], list[str]]] = {}
    flag = SignalFlag()
    try:
        for role, n in counts.items():
            for i in range(n):
                members[(role, i)] = actor_cls.options(num_cpus=cpus_per_role, max_restarts=0).remote(role, i)
        layout = _reserve(members)
        log.info("cluster on Ray: %s", {r: [f"{h}:{p}" for h, p in a] for r, a in layout.items()})
        for (role, i), actor in members.items():
            host = layout[role][i][0]
            run_args = ["--model", model, "--model-dir", model_dir, "--bind-host", host,
                        *(["--metrics-port", "0"] if metrics else []), "--", *train_args]
            env = {**mlp_environment(layout, role, i), LAUNCH_ID_VAR: launch_id,
                   **transport_security.TransportSecurity.from_environ().environ()}
            launches[(role, i)] = env, run_args
            ray.get(actor.start.remote(env, run_args))
        return _watch(members, flag, out, restarts, launches)
    finally:
        flag.restore()
        stops = [a.stop.remote() for a in members.values()]
        try:
            ray.get(stops, timeout=SHUTDOWN_GRACE_S + 10)
        except Exception as exc:  # an actor that already died has nothing left to stop
            log.warning("stopping actors: %s", exc)
        for actor in members.values():
            ray.kill(actor)
        if started_ray:
            ray.shutdown()


def _reserve(members: dict) -> dict[str, list[tuple[str, int]]]:
    import ray

    addrs = dict(zip(members, ray.get([a.reserve.remote() for a in members.values()])))
    seen: set[tuple[str, int]] = set()
    for key, addr in addrs.items():
        while addr in seen:  # two actors on one node drew the same free port
            addr = ray.get(members[key].reserve.remote())
        seen.add(addr)
        addrs[key] = addr
    layout: dict[str, list[tuple[str, int]]] = {}
    for (role, _i), addr in addrs.items():
        layout.setdefault(role, []).append(addr)
    return layout


def _watch(members: dict, flag: SignalFlag, out, restarts: RestartPolicy, launches: dict) -> int:
    import ray

    done_at: float | None = None
    while True:
        keys = list(members)
        results = ray.get([members[k].poll.remote() for k in keys])
        codes = {}
        for (role, i), (code, lines) in zip(keys, results):
            for line in lines:
                out.write(f"[{role}:{i}] {line}")
            codes[(role, i)] = code
        out.flush()
        for (role, i), code in codes.items():
            if code in (None, 0):
                continue
            if not restarts.allow(role, i, describe_exit(code)):
                log.error("%s:%d failed (%s): stopping the job", role, i, describe_exit(code))
                return 1
            ray.get(members[(role, i)].start.remote(*launches[(role, i)]))
            codes[(role, i)] = None
        if all(c == 0 for c in codes.values()):
            log.info("job finished: every actor's process exited 0")
            return 0
        if done_at is None and all(c == 0 for (r, _), c in codes.items() if r == "worker"):
            log.info("all workers finished; waiting for the services to stop")
            done_at = time.monotonic()
        if done_at is not None and time.monotonic() - done_at > SHUTDOWN_GRACE_S:
            stuck = [f"{r}:{i}" for (r, i), c in codes.items() if c is None]
            log.error("%s did not stop within %.0fs after the job ended", ", ".join(stuck), SHUTDOWN_GRACE_S)
            return 1
        if flag.sleep(POLL_S):
            log.warning("interrupted (signal %d): stopping the job", flag.received)
            return 128 + (flag.received or 0)
