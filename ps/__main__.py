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
import signal
import threading

from services import role_logging

log = logging.getLogger("ps.service.server")


def warm_up_kernels() -> float:
    """Run the store's common kernels once (small and parallel paths) so the first RPCs do not pay for
    numba compilation or cache loading (seconds on a fresh clone, where that can exceed client deadlines)."""
    import time

    import numpy as np

    from ps.store.table import EmbeddingTable

    start = time.perf_counter()
    for optimizer in ({"type": "sgd", "learning_rate": 0.1}, {"type": "adagrad", "learning_rate": 0.1}):
        table = EmbeddingTable.from_dict({"dim": 4, "optimizer": optimizer})
        for n in (4, 1 << 16):
            ids = np.arange(n, dtype=np.int64)
            ones = np.ones((n, 4), np.float32)
            table.apply_gradients(ids, ones)
            table.assign(ids, ones)
            table.assign_add(ids, ones)
            table.lookup(ids)
            table.lookup(ids, dtype=np.float16)
    return time.perf_counter() - start


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, required=True, help="gRPC port (0 = any free port, logged)")
    parser.add_argument("--shard-index", type=int, required=True)
    parser.add_argument("--num-shards", type=int, required=True)
    parser.add_argument("--checkpoint-dir", default=None,
                        help="restore this shard's part of the latest complete checkpoint here at start-up "
                             "(or its own exit snapshot, when that is newer)")
    parser.add_argument("--save-on-exit", action="store_true",
                        help="on SIGTERM/SIGINT, after in-flight calls finish, save this shard's state to "
                             "CHECKPOINT_DIR/exit/shard-I-of-N/ (a restart then resumes exactly there)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for all interfaces)")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="Prometheus port (0 = any free port, logged; -1 = off)")
    parser.add_argument("--server-model", choices=("sync", "aio"), default="sync",
                        help="grpc thread-pool server or grpc.aio on uvloop (see ps/service/server.py)")
    parser.add_argument("--threads", type=int, default=8, help="RPC handler threads")
    parser.add_argument("--max-message-mb", type=int, default=512, help="largest request/response accepted")
    parser.add_argument("--grace-s", type=float, default=10.0, help="time in-flight calls get on SIGTERM")


def main(args: argparse.Namespace) -> int:
    role_logging.configure("ps", args.shard_index)
    if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
        log.error("--shard-index must be in [0, --num-shards), got %d of %d", args.shard_index, args.num_shards)
        return 2
    if args.save_on_exit and not args.checkpoint_dir:
        log.error("--save-on-exit needs --checkpoint-dir (where the exit snapshot goes)")
        return 2
    from ps.kernels.threads import passive_kernel_threads
    from services.malloc_tuning import tune_malloc

    tune_malloc()
    passive_kernel_threads()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: (log.info("signal %d: shutting down", signum), stop.set()))

    from ps.persist import checkpoint
    from ps.service import rpc_metrics as metrics
    from ps.service.server import serve
    from ps.service.servicer import ParameterServerServicer
    from ps.store.shard_state import ShardState
    from services import exit_hook
    from services.metrics import start_metrics_server

    exit_hook.install("ps", args.shard_index)

    log.info("store kernels warm in %.2fs", warm_up_kernels())
    state = ShardState(args.shard_index, args.num_shards)
    if args.checkpoint_dir:
        source = checkpoint.startup_source(args.checkpoint_dir, args.shard_index, args.num_shards)
        if source is None:
            log.info("no complete checkpoint in %s: starting empty", args.checkpoint_dir)
        else:
            kind, path = source
            log.info("restoring %s (%s)", path, kind)
            try:
                state.restore_own_part(path) if kind == "exit" else state.restore(str(path))
            except (ValueError, OSError) as exc:
                log.error("cannot restore %s: %s", path, exc)
                return 1
    metrics.register_shard(state)
    metrics_note = "off"
    if args.metrics_port >= 0:
        metrics_note = f"{args.host}:{start_metrics_server(args.metrics_port, addr=args.host)}"
    servicer = ParameterServerServicer(state, args.server_model)

    def ready(port: int) -> None:
        log.info("ready: ps shard %d of %d serving on %s:%d (model=%s, metrics=%s, restored=%s)",
                 args.shard_index, args.num_shards, args.host, port, args.server_model, metrics_note,
                 state.restored_from or "-")

    try:
        serve([servicer.handler()], f"{args.host}:{args.port}", model=args.server_model, threads=args.threads,
              max_message_bytes=args.max_message_mb * 1024 * 1024, stop=stop, on_ready=ready, grace_s=args.grace_s)
    except OSError as exc:
        log.error("%s", exc)
        return 1
    if args.save_on_exit:
        snapshot = checkpoint.exit_snapshot_path(args.checkpoint_dir, args.shard_index, args.num_shards)
        try:
            _path, rows = state.save(str(snapshot.parent), state.global_step)
        except (ValueError, OSError) as exc:
            log.error("exit snapshot to %s failed: %s", snapshot, exc)
            return 1
        log.info("exit snapshot saved to %s: %s", snapshot, rows)
    log.info("stopped")
    return 0
