"""The serving side of the online sync: `--update-policy training-sync` on `monolith serve-ps`.

A serving shard then takes `ServingSync/SyncRows` messages from the training shards (ps/service/sync_sender.py,
protocol in docs/online-sync.md) and refuses every other update RPC, as a read-only shard does.

- One message is applied atomically: it is checked whole first (tables known, ids this shard's, rows of the
  table's dim and finite; anything wrong refuses it with its status and changes nothing), then applied while
  holding a shard-wide lock that every Lookup takes for reading, so a lookup sees all of its rows old or all new,
  across tables.
- Per training shard the receiver keeps the version it applied last; an incremental message applies only on
  top of exactly that version (`base_version`), otherwise the answer is `applied=false` with the version held,
  and the sender follows with a full resync. A restarted serving shard knows no versions, so its first sync
  from each training shard is a full resync: it serves its export until then, and the training state after.
- `Health` reports the versions and the time of the stalest training shard's last batch; Prometheus
  `sync_lag_seconds` is the age of that batch, read at scrape time.
"""
from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily

from protos import ps_pb2
from ps.errors import PSInvalidArgument, ReadOnlyShard
from ps.service.servicer import ParameterServerServicer
from ps.store.rwlock import RWLock
from ps.store.shard_state import ShardState
from ps.store.table import CheckedSync
from ps.wire.tensors import DTYPES, ids_from_bytes, rows_from_bytes

SYNC_SERVICE = ps_pb2.DESCRIPTOR.services_by_name["ServingSync"].full_name


@dataclass(frozen=True)
class AppliedSync:
    """The last batch of one training shard this serving shard applied."""

    version: int
    snapshot_time: float
    applied_at: float


class SyncProgress:
    """What a receiver of a sync has applied, per training shard (`applied`), summed up."""

    applied: dict[int, AppliedSync]

    @staticmethod
    def check_header(method: str, request: Any) -> int:
        """The sending training shard of a sync message, after checking its source and version."""
        source = request.source_shard
        if not 0 <= source < request.source_num_shards:
            raise PSInvalidArgument(f"{method}: source_shard {source} is not in [0, {request.source_num_shards})")
        if request.version <= 0:
            raise PSInvalidArgument(f"{method}: version must be > 0, got {request.version}")
        return source

    @property
    def version(self) -> int:
        """The newest version applied from any training shard (0: none)."""
        return max((a.version for a in self.applied.values()), default=0)

    @property
    def stalest_time(self) -> float:
        """When the stalest training shard's last applied message was taken (0: none applied)."""
        return min((a.snapshot_time for a in self.applied.values()), default=0.0)


class SyncReceiver(SyncProgress):
    """Applies sync messages to one serving shard and answers what it holds."""

    def __init__(self, state: ShardState) -> None:
        self.state = state
        self.lookups = RWLock()
        """Lookups hold it for reading, a message's apply for writing."""
        self._order = threading.Lock()  # one message at a time: version check and apply together
        self.applied: dict[int, AppliedSync] = {}
        _RECEIVERS.add(self)

    def sync_rows(self, request: ps_pb2.SyncRowsRequest) -> ps_pb2.SyncRowsResponse:
        source = self.check_header("SyncRows", request)
        with self._order:
            held = self.applied.get(source)
            known = held.version if held else 0
            if not request.full and (request.base_version == 0 or request.base_version != known):
                return ps_pb2.SyncRowsResponse(applied=False, known_version=known)
            if not request.full and request.version <= known:
                raise ValueError(f"SyncRows: version {request.version} of training shard {source} is not after "
                                 f"the one applied, {known}")
            checked = self._check(request)
            with self.lookups.write():
                for batch in checked:
                    batch.table.apply_sync(batch)
            if request.last_part:
                self.applied[source] = AppliedSync(request.version, request.snapshot_time, time.time())
                known = request.version
        return ps_pb2.SyncRowsResponse(applied=True, known_version=known,
                                       rows={t.table: len(b.ids) for t, b in zip(request.tables, checked)},
                                       removed={t.table: len(b.removed) for t, b in zip(request.tables, checked)})

    def _check(self, request: ps_pb2.SyncRowsRequest) -> list[CheckedSync]:
        """Every table's part decoded and checked; nothing is applied unless all pass."""
        seen: set[str] = set()
        out = []
        for item in request.tables:
            where = f"SyncRows table {item.table!r}"
            if item.table in seen:
                raise ValueError(f"{where} appears twice")
            seen.add(item.table)
            table = self.state.table(item.table)
            dtype = DTYPES.get(item.dtype)
            if dtype is None:
                raise ValueError(f"{where}: unknown dtype {item.dtype}")
            ids = ids_from_bytes(item.ids, where)
            removed = ids_from_bytes(item.removed_ids, f"{where} removed_ids")
            values = rows_from_bytes(item.values, ids.size, table.dim, where, dtype)
            self.state.check_owned(item.table, ids)
            self.state.check_owned(item.table, removed)
            try:
                out.append(table.check_sync(ids, values.astype(np.float32), removed))
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"{where}: {exc}") from None
        return out

    # -- what it holds ----------------------------------------------------------------------------
    def add_to_health(self, response: ps_pb2.HealthResponse) -> ps_pb2.HealthResponse:
        response.sync_version = self.version
        response.sync_time = self.stalest_time
        for source, applied in list(self.applied.items()):
            response.sync_versions[source] = applied.version
        return response


class TrainingSync:
    """The update policy of a serving shard fed by the online sync: the PS update RPCs are refused (only
    `SyncRows` changes the shard); lookups take the receiver's lock; Health reports the sync."""

    def __init__(self, state: ShardState) -> None:
        self.receiver = SyncReceiver(state)
        self.shard_index = state.shard_index

    def check(self, method: str, request: Any) -> None:
        raise ReadOnlyShard(f"serving PS shard {self.shard_index} takes updates only from the online sync "
                            f"(ServingSync/SyncRows): {method} refused")

    def attach(self, servicer: ParameterServerServicer) -> None:
        """Route the servicer's Lookup through the receiver's lock and add the sync to its Health."""
        lookup, health = servicer.lookup, servicer.health
        lock = self.receiver.lookups

        def locked_lookup(request):
            with lock.read():
                return lookup(request)

        servicer.lookup = locked_lookup  # type: ignore[method-assign]
        servicer.health = lambda request: self.receiver.add_to_health(health(request))  # type: ignore[method-assign]
        self._servicer = servicer

    def extra_handlers(self) -> list[grpc.GenericRpcHandler]:
        """The `ServingSync` service, answered through the servicer's error handling and metrics."""
        wrap: Callable = self._servicer._wrap  # the same status mapping, logging and counters as the PS RPCs
        parse = ps_pb2.SyncRowsRequest.FromString
        call = wrap("SyncRows", _parsed(parse), self.receiver.sync_rows)
        return [grpc.method_handlers_generic_handler(SYNC_SERVICE, {"SyncRows": grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=None, response_serializer=lambda r: r.SerializeToString())})]


def _parsed(parse: Callable) -> Callable:
    def parse_or_refuse(raw: bytes):
        try:
            return parse(raw)
        except Exception as exc:  # protobuf's DecodeError: a bad request, not a server fault
            raise ValueError(f"malformed SyncRowsRequest ({len(raw)} bytes): {exc}") from None

    return parse_or_refuse


_RECEIVERS: weakref.WeakSet[SyncReceiver] = weakref.WeakSet()


class _SyncLagCollector:
    """`sync_lag_seconds` and `sync_version` of every serving shard in this process fed by the sync."""

    def collect(self):
        lag = GaugeMetricFamily("sync_lag_seconds", "age of the stalest training shard's last applied sync batch",
                                labels=["shard"])
        version = GaugeMetricFamily("sync_version", "newest online sync version applied", labels=["shard"])
        now = time.time()
        for receiver in list(_RECEIVERS):
            shard = str(receiver.state.shard_index)
            if receiver.applied:
                lag.add_metric([shard], max(0.0, now - receiver.stalest_time))
            version.add_metric([shard], receiver.version)
        yield from (lag, version)


REGISTRY.register(_SyncLagCollector())
