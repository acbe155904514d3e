"""`monolith serve-ps`: one serving PS shard: the rows of `<export_base>/ps_<i>/<version>`, answering lookups
over the PS protocol (the same `ParameterServer` service, servicer and client as training).

The shard is read-only unless its update policy lets a call through. The policy is pluggable: every RPC
that would change the shard (`UPDATE_METHODS`) is first handed to `UpdatePolicy.check(method, request)`,
which raises (a `ps.errors` class, so the caller gets its status) to refuse it. `ReadOnly`, the default,
refuses them all with `ReadOnlyShard` (FAILED_PRECONDITION). `training-sync` (serving/sync_receiver.py) takes
the online sync from the training shards: a policy may also `attach` to the servicer (wrap its Lookup and
Health) and bring `extra_handlers` (its own gRPC service), chosen with `--update-policy` (docs/online-sync.md).
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np

from protos import ps_pb2
from ps.config import ServerConfig
from ps.errors import CheckpointError, ReadOnlyShard
from ps.persist import checkpoint
from ps.service.servicer import ParameterServerServicer
from ps.store.shard_state import ShardState
from services import role_logging, transport_security
from services.export_layout import ASSETS_EXTRA, PS_SHARD_DIR
from services.signals import stop_on_signals
from serving.model_versions import list_versions
from serving.sync_receiver import TrainingSync

log = logging.getLogger("serving.ps")

UPDATE_METHODS = {"CreateTables": "create_tables", "ApplyGradients": "apply_gradients", "Assign": "assign",
                  "AssignAdd": "assign_add", "Reinitialize": "reinitialize", "Evict": "evict", "Save": "save",
                  "Restore": "restore", "DenseCreate": "dense_create", "DensePush": "dense_push",
                  "GlobalStep": "global_step"}
"""Every RPC that may change a shard (method -> servicer attribute); `GlobalStep` with increment 0 only
reads the step and is always allowed."""


class UpdatePolicy(Protocol):
    """Decides whether an update RPC may change a serving shard."""

    def check(self, method: str, request: Any) -> None:
        """Return to let `method` (a name of `UPDATE_METHODS`) run with its decoded `request`; raise a
        `ps.errors` class to refuse it."""
        ...


class ReadOnly:
    """Refuses every update: the shard serves the exported rows as they are."""

    def __init__(self, shard_index: int) -> None:
        self.shard_index = shard_index

    def check(self, method: str, request: Any) -> None:
        raise ReadOnlyShard(f"serving PS shard {self.shard_index} is read-only: {method} refused")


UPDATE_POLICIES: dict[str, Callable[[ShardState], UpdatePolicy]] = {
    "read-only": lambda state: ReadOnly(state.shard_index),
    "training-sync": TrainingSync,  # the online sync from the training shards (serving/sync_receiver.py)
}
"""`--update-policy` name -> a factory of the policy for the loaded shard."""


def shard_part(export_dir: str | Path) -> Path:
    """The `shard-i-of-m/` directory of a `ps_<i>/<version>` export."""
    parts = sorted((Path(export_dir) / ASSETS_EXTRA / PS_SHARD_DIR).glob("shard-*-of-*"))
    if len(parts) != 1:
        raise CheckpointError(f"{export_dir} is not a serving PS export: expected one shard-i-of-m directory under "
                              f"{ASSETS_EXTRA}/{PS_SHARD_DIR}, found {[p.name for p in parts]}")
    return parts[0]


def newest_export(export_dir: str | Path) -> Path:
    """`export_dir` itself when it is a `ps_<i>/<version>` export; for a `ps_<i>` directory its newest version (so
    a long-lived deployment names the directory, and a restarted shard starts from the latest export)."""
    path = Path(export_dir)
    if (path / ASSETS_EXTRA).is_dir() or not path.is_dir():
        return path
    versions = list_versions(path)
    if not versions:
        raise CheckpointError(f"{path} holds no export version (integer-named directories with saved_model.pb)")
    return path / str(versions[-1])


def load_shard(export_dir: str | Path) -> ShardState:
    """The shard saved in the export, restored as a PS shard restores its own part (files checked)."""
    part = shard_part(export_dir)
    meta = checkpoint.read_meta(part, f"serving PS export {export_dir}")
    state = ShardState(int(meta["shard_index"]), int(meta["num_shards"]))
    state.restore_own_part(part)
    state.restored_from = str(export_dir)  # the entry server checks the version directory's name
    return state


class ServingPSServicer(ParameterServerServicer):
    """The PS servicer with every update RPC passed through an `UpdatePolicy` first."""

    def __init__(self, state: ShardState, updates: UpdatePolicy) -> None:
        super().__init__(state, "sync")
        self.updates = updates
        for method, attr in UPDATE_METHODS.items():
            setattr(self, attr, self._guarded(method, getattr(self, attr)))
        if hasattr(updates, "attach"):  # a policy that changes the shard itself (its lookups, its Health)
            updates.attach(self)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """The PS service, and any service of the update policy's own (the sync's `SyncRows`)."""
        return [self.handler(), *getattr(self.updates, "extra_handlers", list)()]

    def _guarded(self, method: str, handler: Callable) -> Callable:
        def call(request):
            if method == "GlobalStep" and request.increment == 0:  # a read, on any shard
                return ps_pb2.GlobalStepResponse(global_step=self.state.global_step)
            self.updates.check(method, request)
            return handler(request)

        return call


def warm_up_lookups(servicer: ServingPSServicer) -> None:
    """One Lookup of each table through the servicer (float32 and float16), so the first client call does
    not pay for loading compiled kernels."""
    for dtype in (ps_pb2.FLOAT32, ps_pb2.FLOAT16):
        request = ps_pb2.LookupRequest(dtype=dtype)
        for name in servicer.state.tables:
            request.tables.add(table=name, ids=np.array([servicer.state.shard_index], np.int64).tobytes())
        servicer.lookup(request)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServerConfig(port=0)
    parser.add_argument("--export-dir", required=True, help="<export_base>/ps_<i>/<version> of a distributed export, "
                        "or <export_base>/ps_<i> for its newest version")
    parser.add_argument("--port", type=int, required=True, help="gRPC port (0 = any free port, logged)")
    parser.add_argument("--host", default=d.host)
    parser.add_argument("--metrics-port", type=int, default=d.metrics_port,
                        help="Prometheus port (0 = any free port, logged; -1 = off)")
    parser.add_argument("--update-policy", choices=sorted(UPDATE_POLICIES), default="read-only",
                        help="which update RPCs may change the shard")
    parser.add_argument("--threads", type=int, default=d.threads)
    parser.add_argument("--max-message-mb", type=int, default=d.max_message_bytes >> 20)
    parser.add_argument("--grace-s", type=float, default=5.0)
    transport_security.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    given = Path(args.export_dir)
    role_logging.configure("serve-ps", given.name if given.name.startswith("ps_") else given.parent.name)
    from ps.kernels.threads import passive_kernel_threads
    from ps.service import rpc_metrics
    from ps.service.server import serve
    from ps.store.warm_up import warm_up_kernels
    from services import exit_hook
    from services.malloc_tuning import tune_malloc
    from services.metrics import start_metrics_server

    tune_malloc()
    passive_kernel_threads()
    stop = stop_on_signals(log)
    try:
        security = transport_security.from_args_exported(args)
        args.export_dir = str(newest_export(args.export_dir))
        state = load_shard(args.export_dir)
        config = ServerConfig(port=args.port, shard_index=state.shard_index, num_shards=state.num_shards,
                              host=args.host, metrics_port=args.metrics_port, threads=args.threads,
                              max_message_bytes=args.max_message_mb << 20, grace_s=args.grace_s)
    except (ValueError, OSError) as exc:
        log.error("cannot serve %s: %s", args.export_dir, exc)
        return 1
    exit_hook.install("serve-ps", state.shard_index)
    warm_up_kernels()
    rpc_metrics.register_shard(state)
    metrics_note = "off"
    if config.metrics_port >= 0:
        metrics_note = f"{config.host}:{start_metrics_server(config.metrics_port, addr=config.host, security=security)}"
    servicer = ServingPSServicer(state, UPDATE_POLICIES[args.update_policy](state))
    warm_up_lookups(servicer)

    def ready(port: int) -> None:
        log.info("ready: serving ps shard %d of %d (%s) on %s:%d, metrics=%s, update policy %s, tables %s",
                 state.shard_index, state.num_shards, args.export_dir, config.host, port, metrics_note,
                 args.update_policy, {n: int(t.size) for n, t in state.tables.items()})

    try:
        serve(servicer.handlers(), config, stop=stop, on_ready=ready, security=security, name="serve-ps")
    except OSError as exc:
        log.error("%s", exc)
        return 1
    log.info("stopped")
    return 0
