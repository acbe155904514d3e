"""`monolith local`: a whole job as processes on this machine, each started by `monolith run`.

Every role gets a free loopback port and the `MLP_*` variables a scheduler would inject, so the local
cluster exercises exactly the code paths of a YARN/Kubernetes job. The current directory is importable
in every process (as `python -m` makes it for one), so `--model mymodel:MyModel` finds ./mymodel.py, and
every process gets one launch id (`MONOLITH_LAUNCH_ID`) new for this run. Output is streamed with `[role:i]`
prefixes. The first process to fail (or Ctrl-C) stops all the others; the failing role is named and the
exit status is non-zero. With `--restart-failed K` a failed process is started again instead (same port,
same environment), up to K times per role (`launch.restarts`). Children die with this process (see
`supervision`), so nothing is orphaned.

With `--serve` the job is served while it trains (`launch.serving_loop`): the training PS shards sync their
rows to serving PS shards, which start with `monolith serve` as soon as the chief's first export is
complete; every address is logged, and the serving processes stop with the job.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from launch import serving_loop
from launch.job_args import add_job_arguments, model_dir_of, role_counts, train_args_of
from launch.restarts import RestartPolicy
from launch.serving_loop import ServingLoop
from launch.supervision import SignalFlag, describe_exit, monolith_command, spawn, terminate
from services import role_logging, transport_security
from services.cluster_spec import LAUNCH_ID_VAR, mlp_environment
from services.ports import free_port

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
SHUTDOWN_GRACE_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--no-prefix", action="store_true", help="do not prefix output lines with the role")
    serving_loop.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    role_logging.configure("local", 0)
    try:  # every member inherits the TLS/token settings through its environment
        transport_security.from_args_exported(args)
    except transport_security.SecurityConfigError as exc:
        log.error("cannot start: %s", exc)
        return 2
    model_dir = model_dir_of(args, "monolith-local-")
    try:
        serving = serving_loop.plan(args, model_dir, HOST, set()) if args.serve else None
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        return 2
    return run_local_cluster(args.num_ps, args.num_workers, args.model, model_dir,
                             train_args_of(args), dataservice=args.dataservice, num_dsworkers=args.num_dsworkers,
                             log_prefix=not args.no_prefix, metrics=args.metrics,
                             restarts=RestartPolicy(args.restart_failed), serving=serving)


SERVING_ROLES = ("serving-ps", "serve")


@dataclass
class _Member:
    role: str
    index: int
    env: dict[str, str]
    proc: subprocess.Popen
    pump: threading.Thread
    command: Callable[[], list[str]] = field(repr=False, default=list)
    """The command it runs, asked again at a restart."""

    @property
    def name(self) -> str:
        return f"{self.role}:{self.index}"


def cluster_layout(num_ps: int, num_workers: int, dataservice: bool, num_dsworkers: int,
                   taken: set[int] | None = None) -> dict[str, list]:
    """Free loopback (host, port) pairs for every role of the job, none of the ports `taken`."""
    counts = role_counts(num_ps, num_workers, dataservice, num_dsworkers)
    layout: dict[str, list] = {}
    taken = set(taken or ())
    for role, n in counts.items():
        hosts = []
        for _ in range(n):
            port = free_port(HOST)
            while port in taken:
                port = free_port(HOST)
            taken.add(port)
            hosts.append((HOST, port))
        layout[role] = hosts
    return layout


def run_local_cluster(
    num_ps: int,
    num_workers: int,
    model: str,
    model_dir: str,
    train_args: Sequence[str] = (),
    dataservice: bool = False,
    num_dsworkers: int = 2,
    log_prefix: bool = True,
    out=None,
    metrics: bool = False,
    restarts: RestartPolicy | None = None,
    serving: ServingLoop | None = None,
) -> int:
    """Run the job to completion; 0 when every worker trained successfully and every service stopped.

    `train_args` go to each worker's `monolith train` (e.g. `["--max-steps", "100"]`); `out` receives the
    merged output (default: this process's stdout). With `metrics`, PS shards and workers serve
    Prometheus metrics on free ports and log their URLs. `restarts` (default: none) restarts failed
    processes. `serving` (see `launch.serving_loop.plan`) serves the model while it trains.
    """
    restarts = RestartPolicy() if restarts is None else restarts
    out = sys.stdout if out is None else out
    serving_ports = {int(a.rpartition(":")[2]) for a in (*serving.serving_ps, serving.entry)} if serving else set()
    layout = cluster_layout(num_ps, num_workers, dataservice, num_dsworkers, taken=serving_ports)
    flag = SignalFlag((signal.SIGINT, signal.SIGTERM))
    write_lock = threading.Lock()
    members: list[_Member] = []
    run_args = _run_args(model, model_dir, train_args, metrics, serving)
    launch_id = uuid.uuid4().hex

    def start(role: str, index: int, env: dict[str, str], command: Callable[[], list[str]]) -> _Member:
        proc = spawn(command(), env=env, new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        prefix = f"[{role}:{index}] " if log_prefix else ""
        pump = threading.Thread(target=_pump, args=(proc.stdout, prefix, out, write_lock), daemon=True)
        pump.start()
        return _Member(role, index, env, proc, pump, command)

    def run_command() -> list[str]:
        return monolith_command("run", *run_args)

    def start_serving() -> None:
        if serving is not None:
            _start_serving(serving, members, lambda role, j, cmd: start(role, j, child_environment(
                os.environ, {}, launch_id), cmd))

    try:
        for role in ("ps", "dispatcher", "dsworker", "worker"):
            for index in range(len(layout.get(role, ()))):
                members.append(start(role, index, child_environment(os.environ, mlp_environment(layout, role, index),
                                                                    launch_id), run_command))
        log.info("started %s", ", ".join(f"{m.name} (pid {m.proc.pid}, port {layout[m.role][m.index][1]})"
                                        for m in members))
        if serving is not None:
            how = f"sync every {serving.sync_interval_s:g}s" if serving.sync_interval_s else "do not sync (off)"
            log.info("serving: the training PS shards %s to serving PS %s; the entry will answer Predict on %s once "
                     "the chief's first export under %s is complete", how, ",".join(serving.serving_ps),
                     serving.entry, serving.export_base)
        return _watch(members, flag, restarts, lambda m: start(m.role, m.index, m.env, m.command), start_serving)
    finally:
        flag.restore()
        for m in members:
            if m.proc.poll() is None:
                terminate(m.proc, timeout=SHUTDOWN_GRACE_S / 3, group=True)
        for m in members:
            m.pump.join(5)


def _run_args(model: str, model_dir: str, train_args: Sequence[str], metrics: bool,
              serving: ServingLoop | None) -> list[str]:
    """`monolith run` arguments of every member of the job."""
    role_args = ["--metrics-port", "0"] if metrics else []
    if serving is not None:
        role_args += serving.ps_args()
        train_args = [*train_args, *serving.train_args()]
    return ["--model", model, "--model-dir", model_dir, "--bind-host", HOST, *role_args, "--", *train_args]


def _start_serving(serving: ServingLoop, members: list[_Member],
                   start: Callable[[str, int, Callable[[], list[str]]], _Member]) -> None:
    """Once the first export is complete (and only once): the serving PS shards on it, and the entry. A
    serving PS shard restarted later loads the newest export."""
    if any(m.role in SERVING_ROLES for m in members):
        return
    version = serving.complete_export()
    if version is None:
        return
    for j in range(len(serving.serving_ps)):
        members.append(start("serving-ps", j, functools.partial(_serving_ps_command, serving, j, version)))
    members.append(start("serve", 0, serving.entry_command))
    started = [m for m in members if m.role in SERVING_ROLES]
    log.info("export %s is complete: started %s; the entry (TF Serving PredictionService) is %s", version,
             ", ".join(f"{m.name} (pid {m.proc.pid}, {a})" for m, a in zip(started, serving.serving_ps)),
             f"serve:0 (pid {started[-1].proc.pid}, {serving.entry})")


def _serving_ps_command(serving: ServingLoop, index: int, first_version: str) -> list[str]:
    return serving.serving_ps_command(index, serving.complete_export() or first_version)


def child_environment(parent: Mapping[str, str], mlp: Mapping[str, str], launch_id: str) -> dict[str, str]:
    """A member's environment: ours, its `MLP_*` variables, the launch id, and the current directory
    first on `PYTHONPATH`."""
    path = [os.getcwd(), *filter(None, parent.get("PYTHONPATH", "").split(os.pathsep))]
    return {**parent, **mlp, LAUNCH_ID_VAR: launch_id, "PYTHONPATH": os.pathsep.join(dict.fromkeys(path)),
            "PYTHONUNBUFFERED": "1"}


def _pump(stream, prefix: str, out, lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        with lock:
            out.write(prefix + line)
            out.flush()
    stream.close()


def _watch(members: list[_Member], flag: SignalFlag, restarts: RestartPolicy,
           restart: Callable[[_Member], _Member], tick: Callable[[], None] = lambda: None) -> int:
    """Wait for the workers; restart a failed process while `restarts` allows, else stop everything on
    the first failure or signal. `tick` runs every round (it may add members)."""
    while True:
        tick()
        for i, m in enumerate(members):
            code = m.proc.poll()
            if code is None or code == 0:
                continue
            if restarts.allow(m.role, m.index, describe_exit(code)):
                terminate(m.proc, group=True)  # whatever it started that outlived it
                m.pump.join(5)
                members[i] = restart(m)
                log.info("restarted %s (pid %d)", m.name, members[i].proc.pid)
                continue
            log.error("%s failed (%s): stopping the cluster", m.name, describe_exit(code))
            _stop_all(members)
            return 1
        if all(w.proc.poll() == 0 for w in members if w.role == "worker"):
            log.info("all workers finished (%s); waiting for the services to stop", restarts.summary())
            _stop_all([m for m in members if m.role in SERVING_ROLES])  # they serve until the job ends
            return _finish([m for m in members if m.role not in SERVING_ROLES])
        if flag.sleep(0.2):
            log.warning("interrupted (signal %d): stopping the cluster", flag.received)
            _stop_all(members)
            return 128 + (flag.received or 0)


def _stop_all(members: list[_Member]) -> None:
    for m in members:
        if m.proc.poll() is None:
            m.proc.terminate()
    for m in members:
        code = terminate(m.proc, timeout=SHUTDOWN_GRACE_S, group=True)
        log.info("%s stopped (%s)", m.name, describe_exit(code))


def _finish(members: list[_Member]) -> int:
    failed = []
    for m in members:
        try:
            code = m.proc.wait(SHUTDOWN_GRACE_S)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop within %.0fs after the job ended", m.name, SHUTDOWN_GRACE_S)
            code = terminate(m.proc, group=True)
            failed.append(m.name)
            continue
        if code != 0:
            failed.append(m.name)
            log.error("%s ended with %s", m.name, describe_exit(code))
    if failed:
        log.error("job finished but %s did not stop cleanly", ", ".join(failed))
        return 1
    log.info("job finished: every process exited 0")
    return 0
