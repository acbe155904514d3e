"""`monolith ps`: run one parameter-server shard until SIGTERM.

Start-up order: restore this shard's part of the latest complete checkpoint (if `--checkpoint-dir`
has one, or this shard's own exit snapshot when that is newer), then bind and log the readiness line
`ready: ps shard i of n serving on HOST:PORT`.
SIGTERM/SIGINT: stop accepting calls, finish in-flight ones, with `--save-on-exit` save this shard's
state as an exit snapshot (restored at the next start when newer than the latest checkpoint), exit 0.
"""
from __future__ import annotations

import argparse
import logging
import sys

from ps.config import SERVER_MODELS, ServerConfig
from services import role_logging, transport_security
from services.signals import stop_on_signals

log = logging.getLogger("ps.server")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServerConfig(port=0)  # the defaults live in the config type
    parser.add_argument("--port", type=int, required=True, help="gRPC port (0 = any free port, logged)")
    parser.add_argument("--shard-index", type=int, required=True)
    parser.add_argument("--num-shards", type=int, required=True)
    parser.add_argument("--checkpoint-dir", default=d.checkpoint_dir,
                        help="restore this shard's part of the latest complete checkpoint here at start-up "
                             "(or its own exit snapshot, when that is newer)")
    parser.add_argument("--save-on-exit", action="store_true",
                        help="on SIGTERM/SIGINT, after in-flight calls finish, save this shard's state to "
                             "CHECKPOINT_DIR/exit/shard-I-of-N/ (a restart then resumes exactly there)")
    parser.add_argument("--host", default=d.host, help="address to bind (0.0.0.0 for all interfaces)")
    parser.add_argument("--metrics-port", type=int, default=d.metrics_port,
                        help="Prometheus port (0 = any free port, logged; -1 = off)")
    parser.add_argument("--server-model", choices=SERVER_MODELS, default=d.server_model,
                        help="grpc thread-pool server or grpc.aio on uvloop (see ps/service/server.py)")
    parser.add_argument("--threads", type=int, default=d.threads, help="RPC handler threads")
    parser.add_argument("--max-message-mb", type=int, default=d.max_message_bytes >> 20,
                        help="largest request/response accepted")
    parser.add_argument("--grace-s", type=float, default=d.grace_s, help="time in-flight calls get on SIGTERM")
    parser.add_argument("--sync-interval-s", type=float, default=d.sync_interval_s,
                        help="push the rows changed since the last push to the serving PS shards every this many "
                             "seconds (0: off; docs/online-sync.md)")
    parser.add_argument("--sync-serving-ps", default="",
                        help="comma-separated host:port of serving PS shards 0..M-1 (any M) for --sync-interval-s")
    parser.add_argument("--sync-float16", action="store_true", help="sync rows as float16 (half the bytes)")
    parser.add_argument("--dense-sync-interval-s", type=float, default=d.dense_sync_interval_s,
                        help="push this shard's dense variables to the entry servers every this many seconds "
                             "(0: off; docs/online-sync.md)")
    parser.add_argument("--sync-entry-servers", default="",
                        help="comma-separated host:port of the entry servers (`monolith serve --dense-sync`) for "
                             "--dense-sync-interval-s")
    parser.add_argument("--sync-max-backoff-s", type=float, default=d.sync_max_backoff_s,
                        help="longest wait before retrying a serving PS shard or entry server that failed "
                             "(doubles from the interval)")
    transport_security.add_arguments(parser)


def config_of(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(port=args.port, shard_index=args.shard_index, num_shards=args.num_shards, host=args.host,
                        checkpoint_dir=args.checkpoint_dir, save_on_exit=args.save_on_exit,
                        metrics_port=args.metrics_port, server_model=args.server_model, threads=args.threads,
                        max_message_bytes=args.max_message_mb << 20, grace_s=args.grace_s,
                        sync_interval_s=args.sync_interval_s,
                        sync_serving_ps=tuple(a for a in args.sync_serving_ps.split(",") if a),
                        sync_float16=args.sync_float16, dense_sync_interval_s=args.dense_sync_interval_s,
                        sync_entry_servers=tuple(a for a in args.sync_entry_servers.split(",") if a),
                        sync_max_backoff_s=args.sync_max_backoff_s)


def _restore_at_start(state, checkpoint_dir: str, config: ServerConfig) -> bool:
    """Load the latest complete checkpoint's part (or this shard's newer exit snapshot); False if that fails."""
    from ps.persist import checkpoint

    source = checkpoint.startup_source(checkpoint_dir, config.shard_index, config.num_shards)
    if source is None:
        log.info("no complete checkpoint in %s: starting empty", checkpoint_dir)
        return True
    kind, path = source
    log.info("restoring %s (%s)", path, kind)
    try:
        state.restore_own_part(path) if kind == "exit" else state.restore(str(path))
    except (ValueError, OSError) as exc:
        log.error("cannot restore %s: %s", path, exc)
        return False
    return True


def main(args: argparse.Namespace) -> int:
    role_logging.configure("ps", args.shard_index)
    try:
        config = config_of(args)
        security = transport_security.from_args_exported(args)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    return run(config, security)


def run(config: ServerConfig, security: transport_security.TransportSecurity | None = None) -> int:
    """Serve one shard until SIGTERM/SIGINT; the process exit code."""
    from ps.kernels.threads import passive_kernel_threads
    from services.malloc_tuning import tune_malloc

    security = transport_security.TransportSecurity.from_environ() if security is None else security
    tune_malloc()
    passive_kernel_threads()
    stop = stop_on_signals(log)

    from ps.persist import checkpoint
    from ps.service import rpc_metrics
    from ps.service.server import serve
    from ps.service.servicer import ParameterServerServicer
    from ps.store.shard_state import ShardState
    from ps.store.warm_up import warm_up_kernels
    from services import exit_hook
    from services.metrics import start_metrics_server

    exit_hook.install("ps", config.shard_index)

    log.info("store kernels warm in %.2fs", warm_up_kernels())
    state = ShardState(config.shard_index, config.num_shards)
    if config.checkpoint_dir and not _restore_at_start(state, config.checkpoint_dir, config):
        return 1
    rpc_metrics.register_shard(state)
    metrics_note = "off"
    if config.metrics_port >= 0:
        bound = start_metrics_server(config.metrics_port, addr=config.host, security=security)
        metrics_note = f"{config.host}:{bound}"
    servicer = ParameterServerServicer(state, config.server_model, config.checkpoint_dir)

    def ready(port: int) -> None:
        log.info("ready: ps shard %d of %d serving on %s:%d (model=%s, metrics=%s, restored=%s, transport=%s)",
                 config.shard_index, config.num_shards, config.host, port, config.server_model, metrics_note,
                 state.restored_from or "-", security.describe())

    sender = None
    if config.sync_interval_s:
        from ps.service.sync_sender import SyncConfig, SyncSender

        sender = SyncSender(state, SyncConfig(config.sync_serving_ps, config.sync_interval_s, config.sync_float16,
                                                max_backoff_s=config.sync_max_backoff_s),
                            security)
        sender.start(stop)
    dense_sender = None
    if config.dense_sync_interval_s:
        from ps.service.dense_sync_sender import DenseSyncConfig, DenseSyncSender

        dense_sender = DenseSyncSender(state, DenseSyncConfig(config.sync_entry_servers, config.dense_sync_interval_s,
                                                              max_backoff_s=config.sync_max_backoff_s), security)
        dense_sender.start(stop)
    try:
        serve([servicer.handler()], config, stop=stop, on_ready=ready, security=security)
    except OSError as exc:
        log.error("%s", exc)
        return 1
    finally:
        for running in (sender, dense_sender):
            if running is not None:
                stop.set()
                running.close(timeout=config.grace_s)
    if config.save_on_exit and config.checkpoint_dir:
        snapshot = checkpoint.exit_snapshot_path(config.checkpoint_dir, config.shard_index, config.num_shards)
        try:
            _path, rows = state.save(str(snapshot.parent), state.global_step)
        except (ValueError, OSError) as exc:
            log.error("exit snapshot to %s failed: %s", snapshot, exc)
            return 1
        log.info("exit snapshot saved to %s: %s", snapshot, rows)
    log.info("stopped")
    return 0


if __name__ == "__main__":  # python -m ps --port P --shard-index i --num-shards n
    _parser = argparse.ArgumentParser(prog="python -m ps", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
