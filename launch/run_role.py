"""`monolith run`: become this process's role in the job described by `MLP_*` variables or `TF_CONFIG`.

The same command runs in every container of a job; the environment decides the role:

* `ps` — `monolith ps` on its port, until every worker has reported success (`job_status`) or SIGTERM;
* `dispatcher` / `dsworker` — the tf.data service, with the same lifetime as the PS;
* `worker` — reports its state on its port, waits (bounded) for every PS shard, the dispatcher and the
  data workers, then runs `monolith train`; worker 0 is the chief.

The role itself runs as a child process; this process only supervises it, so a SIGTERM here stops the
child in order and the exit code is the child's (0 for a PS/dispatcher stopped because the job is over).
"""
from __future__ import annotations

import argparse
import logging
import shlex
import time

from launch.job_status import JobWatcher, StatusServer
from launch.supervision import SignalFlag, describe_exit, monolith_command, spawn, terminate
from services import exit_hook, role_logging, transport_security
from services.cluster_spec import ClusterSpec
from services.mlp_env import MLPEnvError, check_port, split_addr
from services.ports import free_port
from worker.train_main import MAX_STEPS_HELP

log = logging.getLogger(__name__)

EXIT_WAIT_TIMEOUT = 3
EXIT_BAD_CONFIG = 2


class PeerTimeout(RuntimeError):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="worker role: the model class as pkg.module:Class")
    parser.add_argument("--model-dir", help="worker role: model/checkpoint directory")
    parser.add_argument("--max-steps", type=int, help=f"worker role: {MAX_STEPS_HELP}")
    parser.add_argument("--checkpoint-dir",
                        help="ps role: restore the latest complete checkpoint from here (default: --model-dir)")
    parser.add_argument("--save-on-exit", action="store_true",
                        help="ps role: on SIGTERM save an exit snapshot to the checkpoint dir (see `monolith ps`)")
    parser.add_argument("--bind-host", default=None,
                        help="interface the PS and status port listen on (default: all, IPv6 if our address is)")
    parser.add_argument("--wait-timeout", type=float, default=300.0,
                        help="seconds a worker waits for the PS shards, dispatcher and data workers")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds between job-status polls")
    parser.add_argument("--linger", type=float, default=60.0,
                        help="seconds a finished worker keeps reporting success while peers are still up")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="ps and worker roles: serve Prometheus metrics here (0 = any free port, logged)")
    parser.add_argument("--sync-interval-s", type=float, default=None,
                        help="ps role: push changed rows to the serving PS shards this often (see `monolith ps`)")
    parser.add_argument("--sync-serving-ps", default=None, help="ps role: the serving PS shards for --sync-interval-s")
    parser.add_argument("--sync-float16", action="store_true", help="ps role: sync rows as float16")
    parser.add_argument("--dense-sync-interval-s", type=float, default=None,
                        help="ps role: push the dense variables to the entry servers this often (see `monolith ps`)")
    parser.add_argument("--sync-entry-servers", default=None,
                        help="ps role: the entry servers for --dense-sync-interval-s")
    parser.add_argument("--sync-max-backoff-s", type=float, default=None,
                        help="ps role: longest wait before retrying a serving PS shard that failed")
    parser.add_argument("--extra-dsworkers", type=int, default=0,
                        help="worker role: also run this many tf.data data workers on the worker's host")
    transport_security.add_arguments(parser)
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="after `--`: extra arguments for `monolith train`")


def main(args: argparse.Namespace) -> int:
    try:
        spec = ClusterSpec.from_environ()
    except MLPEnvError as exc:
        role_logging.configure("run", "?")
        log.error("cannot start: %s", exc)
        return EXIT_BAD_CONFIG
    role_logging.configure(f"run/{spec.task_type}", spec.task_index)
    log.info("%s (%s) with %s", spec.name, spec.source, {r: len(a) for r, a in spec.roles.items()})
    if spec.task_type not in ("ps", "worker", "dispatcher", "dsworker"):
        log.error("unknown role %r (expected ps, worker, dispatcher or dsworker)", spec.task_type)
        return EXIT_BAD_CONFIG
    try:
        transport_security.from_args_exported(args)  # the role's process and its clients inherit it
        cmd = train_command(spec, args) if spec.task_type == "worker" else service_command(spec, args)
    except (MLPEnvError, transport_security.SecurityConfigError) as exc:
        log.error("cannot start: %s", exc)
        return EXIT_BAD_CONFIG
    flag = SignalFlag()
    exit_hook.install(spec.task_type, spec.task_index)  # counts the signal that stopped us, chained to `flag`
    if spec.task_type == "worker":
        return _run_worker(spec, cmd, args, flag)
    return _run_service(spec, cmd, args, flag)


def bind_host(spec: ClusterSpec, args: argparse.Namespace) -> str:
    """`--bind-host`, else every interface of our address's family."""
    if args.bind_host:
        return args.bind_host
    return "::" if ":" in split_addr(spec.own_address)[0] else "0.0.0.0"


def service_command(spec: ClusterSpec, args: argparse.Namespace) -> list[str]:
    """The `monolith <role>` argv for a PS, dispatcher or data-worker process of `spec`."""
    port = str(spec.bind_port)
    if spec.task_type == "ps":
        cmd = monolith_command("ps", "--port", port, "--shard-index", str(spec.task_index),
                               "--num-shards", str(spec.num("ps")), "--host", bind_host(spec, args))
        checkpoint_dir = args.checkpoint_dir or args.model_dir
        cmd += ["--checkpoint-dir", checkpoint_dir] if checkpoint_dir else []
        cmd += ["--save-on-exit"] if args.save_on_exit else []
        if args.sync_interval_s is not None:
            cmd += ["--sync-interval-s", str(args.sync_interval_s), "--sync-serving-ps", args.sync_serving_ps or ""]
        cmd += ["--sync-float16"] if args.sync_float16 else []
        if args.dense_sync_interval_s is not None:
            cmd += ["--dense-sync-interval-s", str(args.dense_sync_interval_s),
                    "--sync-entry-servers", args.sync_entry_servers or ""]
        cmd += ["--sync-max-backoff-s", str(args.sync_max_backoff_s)] if args.sync_max_backoff_s else []
        return cmd + (["--metrics-port", str(args.metrics_port)] if args.metrics_port is not None else [])
    if spec.task_type == "dispatcher":
        return monolith_command("dispatcher", "--port", port)
    if not spec.num("dispatcher"):
        raise MLPEnvError(f"{spec.source}: a dsworker needs a dispatcher, but the job has none")
    host, _ = split_addr(spec.own_address)
    return monolith_command("dsworker", "--dispatcher", spec.address("dispatcher", 0), "--port", port,
                            "--host", host, "--index", str(spec.task_index), "--wait-timeout", str(args.wait_timeout))


def train_command(spec: ClusterSpec, args: argparse.Namespace) -> list[str]:
    """The `monolith train` argv for worker `spec.task_index`."""
    missing = [f"--{n.replace('_', '-')}" for n in ("model", "model_dir") if not getattr(args, n)]
    if missing:
        raise MLPEnvError(f"the worker role needs {' and '.join(missing)}")
    if args.extra_dsworkers and not spec.num("dispatcher"):
        raise MLPEnvError(f"--extra-dsworkers {args.extra_dsworkers} needs a dispatcher, but the job has none")
    cmd = monolith_command("train", "--model", args.model, "--worker-index", str(spec.task_index),
                           "--num-workers", str(spec.num("worker")), "--model-dir", args.model_dir)
    if args.max_steps is not None:
        cmd += ["--max-steps", str(args.max_steps)]
    if spec.num("ps"):
        cmd += ["--ps", ",".join(spec.addresses("ps"))]
    dispatcher = spec.dispatcher_target()
    if dispatcher:
        cmd += ["--dispatcher", dispatcher]
    if args.metrics_port is not None:
        cmd += ["--metrics-port", str(args.metrics_port)]
    extra = list(args.train_args or [])
    return cmd + (extra[1:] if extra[:1] == ["--"] else extra)


def _run_service(spec: ClusterSpec, cmd: list[str], args: argparse.Namespace, flag: SignalFlag) -> int:
    watcher = JobWatcher(spec.addresses("worker"))
    child = spawn(cmd)
    log.info("started %s (pid %d): %s; it stops when every worker has finished", spec.name, child.pid,
             shlex.join(cmd))
    while True:
        code = child.poll()
        if code is not None:
            log.error("%s exited on its own (%s) before the job was over", spec.name, describe_exit(code))
            return code if code > 0 else 1
        if watcher.poll():
            log.info("every worker finished (%s): stopping %s", watcher.summary(), spec.name)
            return _stopped(spec, child)
        if flag.sleep(args.poll_interval):
            log.info("received signal %d: stopping %s", flag.received, spec.name)
            return _stopped(spec, child)


def _stopped(spec: ClusterSpec, child) -> int:
    code = terminate(child)
    log.info("%s stopped (%s)", spec.name, describe_exit(code))
    return 0 if code in (0, -15) else (code if code > 0 else 1)


def _wait_for_peers(spec: ClusterSpec, timeout: float, flag: SignalFlag) -> None:
    """Block until every PS shard, the dispatcher and the data workers accept connections."""
    deadline = time.monotonic() + timeout
    peers = [(r, i, a) for r in ("ps", "dispatcher", "dsworker") for i, a in enumerate(spec.addresses(r))]
    for role, index, addr in peers:
        host, port = split_addr(addr)
        while not check_port(host, port, timeout=min(1.0, max(0.01, deadline - time.monotonic()))):
            if flag:
                raise InterruptedError(f"signal {flag.received} while waiting for {role}:{index}")
            if time.monotonic() >= deadline:
                raise PeerTimeout(f"{role}:{index} at {addr} did not accept connections within {timeout:g}s "
                                  f"(from {spec.source}); is it running and reachable?")
        log.info("%s:%d is up at %s", role, index, addr)
    if spec.num("ps"):
        from ps.client import PSClient

        client = PSClient(spec.addresses("ps"))
        try:
            client.wait_until_ready(timeout_s=max(1.0, deadline - time.monotonic()))
        except Exception as exc:
            raise PeerTimeout(f"PS shards {spec.addresses('ps')} not ready within {timeout:g}s: {exc}") from exc
        finally:
            client.close()


def _run_worker(spec: ClusterSpec, cmd: list[str], args: argparse.Namespace, flag: SignalFlag) -> int:
    status = StatusServer(spec.bind_port, bind_host(spec, args))
    try:
        try:
            _wait_for_peers(spec, args.wait_timeout, flag)
        except PeerTimeout as exc:
            log.error("%s", exc)
            status.state = f"exited {EXIT_WAIT_TIMEOUT}"
            return EXIT_WAIT_TIMEOUT
        except InterruptedError as exc:
            log.info("%s", exc)
            return 128 + (flag.received or 15)
        extras = _start_extra_dsworkers(spec, args)
        status.state = "running"
        child = spawn(cmd)
        log.info("started training%s (pid %d): %s", " as the chief" if spec.is_chief else "", child.pid,
                 shlex.join(cmd))
        while child.poll() is None:
            if flag.sleep(args.poll_interval):
                log.info("received signal %d: stopping training", flag.received)
                terminate(child)
                break
        code = child.returncode
        for extra in extras:
            terminate(extra)
        status.state = f"exited {code}"
        log.info("training %s", "finished" if code == 0 else f"failed ({describe_exit(code)})")
        if code == 0 and not flag:
            _linger(spec, args, flag)
        return code if code >= 0 else 128 - code
    finally:
        status.close()


def _start_extra_dsworkers(spec: ClusterSpec, args: argparse.Namespace) -> list:
    """Data workers beside this training worker (Monolith's extra dsworkers on GPU hosts, see
    docs/monolith-reference.md): they register with the dispatcher on free ports, so no other process needs
    to know about them."""
    host, _ = split_addr(spec.own_address)
    procs = []
    for i in range(args.extra_dsworkers):
        cmd = monolith_command("dsworker", "--dispatcher", spec.address("dispatcher", 0),
                               "--port", str(free_port(bind_host(spec, args))), "--host", host,
                               "--index", f"w{spec.task_index}-{i}", "--wait-timeout", str(args.wait_timeout))
        procs.append(spawn(cmd))
        log.info("started extra dsworker %d (pid %d): %s", i, procs[-1].pid, shlex.join(cmd))
    return procs


def _linger(spec: ClusterSpec, args: argparse.Namespace, flag: SignalFlag) -> None:
    """Keep reporting success until the PS, dispatcher and data workers have stopped (bounded)."""
    peers = [a for r in ("ps", "dispatcher", "dsworker") for a in spec.addresses(r)]
    deadline = time.monotonic() + args.linger
    while time.monotonic() < deadline and not flag:
        if not any(check_port(*split_addr(a), timeout=0.2) for a in peers):
            return
        flag.sleep(args.poll_interval)
    if peers and not flag:
        log.info("peers still up after %.0fs; leaving anyway", args.linger)
