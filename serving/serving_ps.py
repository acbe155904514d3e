"""`monolith serve-ps`: one serving PS shard: the rows of `<export_base>/ps_<i>/<version>`, answering lookups
over the PS protocol (the same `ParameterServer` service and client as training).

Read-only by default: every RPC that would change the shard gets FAILED_PRECONDITION. The update path
is a pluggable `UpdatePolicy`, so a real-time sync from training PS shards can be let through later
without another server.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path

import numpy as np

from protos import ps_pb2
from ps.servicer import ParameterServerServicer
from ps.shard_state import ShardState, WrongShard
from ps.table import EmbeddingTable
from services import role_logging

log = logging.getLogger("serving.ps")

SHARD_DIR = "assets.extra/ps_shard"
SHARD_META = "shard.json"
UPDATE_METHODS = {"CreateTables": "create_tables", "ApplyGradients": "apply_gradients", "Assign": "assign",
                  "AssignAdd": "assign_add", "Reinitialize": "reinitialize", "Evict": "evict", "Save": "save",
                  "Restore": "restore", "DenseCreate": "dense_create", "DensePush": "dense_push"}


class ReadOnlyShard(WrongShard):
    """An update sent to a read-only serving shard (WrongShard is the PS vocabulary's FAILED_PRECONDITION)."""


def load_shard(export_dir: str | Path) -> ShardState:
    """A ShardState holding the export's rows (checked against their checksums) for shard i of m."""
    export_dir = Path(export_dir)
    meta_path = export_dir / SHARD_DIR / SHARD_META
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{export_dir} is not a serving PS export (no readable {SHARD_DIR}/{SHARD_META}: {exc})") \
            from None
    state = ShardState(int(meta["shard_index"]), int(meta["num_shards"]))
    for name, entry in meta["tables"].items():
        state.tables[name] = EmbeddingTable.load(export_dir / SHARD_DIR / entry["dir"])
    state.restored_from = str(export_dir)
    return state


class UpdatePolicy:
    """Decides whether an update RPC may change a serving shard; this default refuses them all."""

    def check(self, method: str, shard_index: int) -> None:
        raise ReadOnlyShard(f"serving PS shard {shard_index} is read-only: {method} refused")


class ServingPSServicer(ParameterServerServicer):
    """The PS servicer with every update RPC passed through an `UpdatePolicy` first."""

    def __init__(self, state: ShardState, updates: UpdatePolicy | None = None) -> None:
        super().__init__(state, "sync")
        self.updates = updates or UpdatePolicy()
        for method, attr in UPDATE_METHODS.items():
            setattr(self, attr, self._guarded(method, getattr(self, attr)))

    def _guarded(self, method: str, handler):
        def call(request):
            self.updates.check(method, self.state.shard_index)
            return handler(request)

        return call

    def global_step(self, request: ps_pb2.GlobalStepRequest) -> ps_pb2.GlobalStepResponse:
        """Reading the step (increment 0) is fine; moving it is an update."""
        if request.increment:
            self.updates.check("GlobalStep", self.state.shard_index)
            return super().global_step(request)
        return ps_pb2.GlobalStepResponse(global_step=self.state.global_step)


def warm_up_lookups(servicer: ServingPSServicer) -> None:
    """One Lookup of each table through the servicer (float32 and float16), so the first client call does
    not pay for loading compiled kernels."""
    for dtype in (ps_pb2.FLOAT32, ps_pb2.FLOAT16):
        request = ps_pb2.LookupRequest(dtype=dtype)
        for name in servicer.state.tables:
            request.tables.add(table=name, ids=np.array([servicer.state.shard_index], np.int64).tobytes())
        servicer.lookup(request)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--export-dir", required=True, help="<export_base>/ps_<i>/<version> of a distributed export")
    parser.add_argument("--port", type=int, required=True, help="gRPC port (0 = any free port, logged)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--max-message-mb", type=int, default=512)
    parser.add_argument("--grace-s", type=float, default=5.0)


def main(args: argparse.Namespace) -> int:
    role_logging.configure("serve-ps", Path(args.export_dir).parent.name)
    from ps.kernel_threads import passive_kernel_threads
    from ps.malloc_tuning import tune_malloc
    from ps.server import serve
    from ps.server_main import warm_up_kernels

    tune_malloc()
    passive_kernel_threads()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: (log.info("signal %d: shutting down", signum), stop.set()))
    try:
        state = load_shard(args.export_dir)
    except (ValueError, OSError) as exc:
        log.error("cannot load %s: %s", args.export_dir, exc)
        return 1
    warm_up_kernels()
    servicer = ServingPSServicer(state)
    warm_up_lookups(servicer)

    def ready(port: int) -> None:
        log.info("ready: serving ps shard %d of %d (%s) on %s:%d, tables %s", state.shard_index, state.num_shards,
                 args.export_dir, args.host, port, {n: int(t.size) for n, t in state.tables.items()})

    try:
        serve([servicer.handler()], f"{args.host}:{args.port}", threads=args.threads,
              max_message_bytes=args.max_message_mb * 1024 * 1024, stop=stop, on_ready=ready, grace_s=args.grace_s)
    except OSError as exc:
        log.error("%s", exc)
        return 1
    log.info("stopped")
    return 0
