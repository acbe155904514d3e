"""The online sync of a training shard: every interval, the rows it changed go to the serving shards.

A thread beside the RPC server (`monolith ps --sync-interval-s S --sync-serving-ps A0,A1,..`). Each round it
takes every table's changes (`EmbeddingTable.take_changes`: changed rows with their current values, evicted
ids), routes them by `id mod M` (M serving shards, any number) and sends serving shard j one `SyncRows`
message holding its part, stamped with a version that only grows. The protocol is in docs/online-sync.md:

- A serving shard applies a batch only on top of the version the sender last saw it apply (`base_version`);
  otherwise (it restarted from an export, or never heard of this shard) it answers `applied=false`, and the
  sender sends it every row it owns, in parts (`full`), the last part carrying the version.
- A serving shard that is down or refuses costs training nothing: its part of the round goes back into the
  tables' change marks (`keep_changes`), it is skipped with doubling backoff, and the accumulated changes
  go out when it answers again.

Values only (no optimizer state), float32 or float16. Dense variables go to the entry servers (dense_sync_sender.py).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import numpy as np
from prometheus_client import Counter

from protos import ps_pb2
from ps.kernels.half_floats import to_float16
from ps.service.server import grpc_options
from ps.sharding import id_owner
from ps.store.shard_state import ShardState
from ps.store.table import EmbeddingTable, TableChanges
from services.periodic import Periodic
from services.transport_security import TransportSecurity

log = logging.getLogger(__name__)

_FLOAT16_MAX = 65504.0
SYNC_METHOD = "/" + ps_pb2.DESCRIPTOR.services_by_name["ServingSync"].full_name + "/SyncRows"
ROWS_SENT = Counter("monolith_ps_sync_rows_total", "rows delivered to serving shards by the online sync",
                    ["shard", "serving_shard"])
FAILURES = Counter("monolith_ps_sync_failures_total", "sync messages a serving shard did not take (down, refused)",
                   ["shard", "serving_shard"])


@dataclass(frozen=True)
class SyncConfig:
    """Where and how often a training shard sends its changed rows."""

    serving_addresses: Sequence[str]
    """host:port of serving shard j at position j (their count is the serving shard count)."""
    interval_s: float
    float16: bool = False
    timeout_s: float = 10.0
    max_backoff_s: float = 30.0
    max_message_bytes: int = 64 << 20
    """A batch bigger than this goes in several messages (each applied atomically on its own)."""

    def __post_init__(self) -> None:
        if not self.serving_addresses:
            raise ValueError("the online sync needs the serving PS addresses (--sync-serving-ps)")
        if not self.interval_s > 0:
            raise ValueError(f"--sync-interval-s must be > 0, got {self.interval_s}")
        if not (self.timeout_s > 0 and self.max_backoff_s > 0 and self.max_message_bytes >= 1 << 16):
            raise ValueError("sync timeout and backoff must be > 0, max message >= 64 KiB")


@dataclass
class _Peer:
    """What the sender knows of one serving shard."""

    index: int
    acked: int = 0
    """The last version it confirmed applying (0: none; it then gets a full resync)."""
    unconfirmed: int = 0
    """A version sent whose answer never came (it may have been applied)."""
    retry_at: float = 0.0
    backoff_s: float = 0.0
    failures: int = 0


@dataclass
class _Part:
    """One table's changes headed for one serving shard."""

    table: EmbeddingTable
    name: str
    ids: np.ndarray
    values: np.ndarray
    removed: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))


class SyncSender:
    def __init__(self, state: ShardState, config: SyncConfig, security: TransportSecurity | None = None) -> None:
        self.state = state
        self.config = config
        security = security or TransportSecurity()
        # a serving shard that comes back is reconnected to within seconds (its own backoff spaces our tries)
        options = [*grpc_options(max(config.max_message_bytes * 2, 64 << 20)),
                   ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 2000)]
        self._channels = [security.channel(a, options) for a in config.serving_addresses]
        self._calls = [ch.unary_unary(SYNC_METHOD, request_serializer=ps_pb2.SyncRowsRequest.SerializeToString,
                                      response_deserializer=ps_pb2.SyncRowsResponse.FromString)
                       for ch in self._channels]
        self.peers = [_Peer(j) for j in range(len(config.serving_addresses))]
        self._tracked: dict[str, EmbeddingTable] = {}
        self._version = 0
        self._pool = ThreadPoolExecutor(max_workers=len(self.peers), thread_name_prefix="ps-sync")
        self._loop: Periodic | None = None
        self._shard = str(state.shard_index)
        self.rounds = 0

    @property
    def num_serving(self) -> int:
        return len(self.peers)

    # -- the loop -------------------------------------------------------------------------------
    def start(self, stop: threading.Event | None = None) -> None:
        """Sync every interval in a thread until `stop` is set or `close`."""
        self.track_new_tables()
        self._loop = Periodic("ps-sync", self.config.interval_s, self.sync_once, log, stop).start()
        log.info("online sync every %.3gs to %d serving shards %s (%s)", self.config.interval_s, self.num_serving,
                 list(self.config.serving_addresses), "float16" if self.config.float16 else "float32")

    def close(self, timeout: float | None = None) -> None:
        """Stop the loop (sets the `stop` event it was started with), wait for the round in flight."""
        if self._loop is not None:
            self._loop.close(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for ch in self._channels:
            ch.close()

    def track_new_tables(self) -> list[str]:
        """Start tracking tables not seen before (created, or replaced by a restore): all their rows count as
        changed, so the next round sends them. Their names."""
        new = [n for n, t in list(self.state.tables.items()) if self._tracked.get(n) is not t]
        for name in new:
            table = self.state.tables[name]
            table.track_changes()
            self._tracked[name] = table
        return new

    def _next_version(self) -> int:
        """Milliseconds of wall-clock time, and always above the previous one: versions keep growing across
        restarts of the shard (as far as its clock does)."""
        self._version = max(self._version + 1, int(time.time() * 1000))
        return self._version

    def sync_once(self) -> dict[int, str]:
        """One round: take the changes, send each serving shard its part. {serving shard: outcome}."""
        self.track_new_tables()
        version, taken_at = self._next_version(), time.time()
        changes = {name: table.take_changes() for name, table in self._tracked.items()}
        parts = self._route(changes)
        futures = {peer.index: self._pool.submit(self._sync_peer, peer, parts[peer.index], version, taken_at)
                   for peer in self.peers}
        outcomes = {j: f.result() for j, f in futures.items()}
        self.rounds += 1
        return outcomes

    def _route(self, changes: dict[str, TableChanges]) -> list[list[_Part]]:
        out: list[list[_Part]] = [[] for _ in self.peers]
        m = self.num_serving
        for name, ch in changes.items():
            table = self._tracked[name]
            owner, removed_owner = id_owner(ch.ids, m), id_owner(ch.removed, m)
            for j in range(m):
                sel = np.flatnonzero(owner == j) if m > 1 else slice(None)
                gone = ch.removed[removed_owner == j] if m > 1 else ch.removed
                out[j].append(_Part(table, name, ch.ids[sel], ch.values[sel], gone))
        return out

    # -- one serving shard ----------------------------------------------------------------------
    def _sync_peer(self, peer: _Peer, parts: list[_Part], version: int, taken_at: float) -> str:
        if time.monotonic() < peer.retry_at:
            self._keep(parts)
            return "backoff"
        try:
            if peer.acked:
                lost = peer.unconfirmed  # a version whose answer never came (it may have been applied)
                answer = self._send_changes(peer, parts, version, taken_at)
                if answer.applied:
                    return self._confirmed(peer, version, parts)
                if lost and answer.known_version == lost:
                    # that message was applied though its answer was lost: continue from it
                    peer.acked = lost
                    answer = self._send_changes(peer, parts, version, taken_at)
                    if answer.applied:
                        return self._confirmed(peer, version, parts)
                log.info("serving shard %d holds version %d of shard %s, not %d: full resync", peer.index,
                         answer.known_version, self._shard, peer.acked)
            self._full_resync(peer, parts, version, taken_at)
            return "full"
        except Exception as exc:  # down, deadline, refused: the changes wait for the next try
            self._keep(parts)
            self._failed(peer, exc)
            return "failed"

    def _send_changes(self, peer: _Peer, parts: list[_Part], version: int, taken_at: float) -> ps_pb2.SyncRowsResponse:
        """The round's changes on top of `peer.acked`: one message, or several of at most max_message_bytes,
        each on the same base (the serving shard records the version with the last); the first answer that
        is not `applied`, else the last."""
        messages = list(self._split(parts))
        for k, chunk in enumerate(messages):
            request = self._message(chunk, version, peer.acked, taken_at)
            request.last_part = k == len(messages) - 1
            answer = self._send(peer, request)
            if not answer.applied:
                break
        return answer

    def _send(self, peer: _Peer, request: ps_pb2.SyncRowsRequest) -> ps_pb2.SyncRowsResponse:
        peer.unconfirmed = request.version if request.last_part else 0
        answer = self._calls[peer.index](request, timeout=self.config.timeout_s)
        if request.last_part and (answer.applied or answer.known_version != request.version):
            peer.unconfirmed = 0
        return answer

    def _confirmed(self, peer: _Peer, version: int, parts: list[_Part]) -> str:
        peer.acked, peer.failures, peer.backoff_s, peer.retry_at = version, 0, 0.0, 0.0
        ROWS_SENT.labels(self._shard, str(peer.index)).inc(sum(len(p.ids) for p in parts))
        return "sent"

    def _full_resync(self, peer: _Peer, parts: list[_Part], version: int, taken_at: float) -> None:
        """Every row this shard holds that serving shard `peer` owns, in parts of at most max_message_bytes;
        the removals of this round ride along with the first. The rows are read after this round's changes
        were taken, so they include them."""
        removed = {p.name: p.removed for p in parts}
        full: list[_Part] = []
        for name, table in self._tracked.items():
            ids, values = table.items()
            if self.num_serving > 1:
                sel = np.flatnonzero(id_owner(ids, self.num_serving) == peer.index)
                ids, values = ids[sel], values[sel]
            full.append(_Part(table, name, ids, values, removed.get(name, np.empty(0, np.int64))))
        peer.acked = 0  # until the last part is confirmed, the next try is a full resync again
        messages = list(self._split(full))
        for k, chunk in enumerate(messages):
            request = self._message(chunk, version, 0, taken_at)
            request.full, request.last_part = True, k == len(messages) - 1
            answer = self._send(peer, request)
            if not answer.applied:
                raise RuntimeError(f"serving shard {peer.index} refused part {k} of a full resync")
        self._confirmed(peer, version, full)
        log.info("full resync of serving shard %d: %d rows in %d messages, version %d", peer.index,
                 sum(len(p.ids) for p in full), len(messages), version)

    def _split(self, parts: list[_Part]):
        """Groups of parts (tables cut into row ranges) of at most max_message_bytes each; at least one group."""
        budget = self.config.max_message_bytes
        group: list[_Part] = []
        size = 0
        for p in parts:
            row_bytes = 8 + p.table.dim * (2 if self.config.float16 else 4)
            start = 0
            while True:
                rows = max(1, (budget - size) // row_bytes)
                piece = _Part(p.table, p.name, p.ids[start:start + rows], p.values[start:start + rows],
                              p.removed if start == 0 else np.empty(0, np.int64))
                group.append(piece)
                size += len(piece.ids) * row_bytes + 8 * len(piece.removed)
                start += rows
                if start >= len(p.ids):
                    break
                yield group
                group, size = [], 0
        yield group

    def _message(self, parts: list[_Part], version: int, base: int, taken_at: float) -> ps_pb2.SyncRowsRequest:
        request = ps_pb2.SyncRowsRequest(source_shard=self.state.shard_index, source_num_shards=self.state.num_shards,
                                         version=version, base_version=base, last_part=True, snapshot_time=taken_at)
        for p in parts:
            values, dtype = p.values, ps_pb2.FLOAT32
            # a part with a value beyond float16's range goes as float32 (as infinity it would be refused)
            if self.config.float16 and not (len(values) and np.abs(values).max() > _FLOAT16_MAX):
                values, dtype = to_float16(values), ps_pb2.FLOAT16
            request.tables.add(table=p.name, ids=p.ids.astype("<i8").tobytes(), values=values.tobytes(),
                               dtype=dtype, removed_ids=p.removed.astype("<i8").tobytes())
        return request

    def _keep(self, parts: list[_Part]) -> None:
        for p in parts:
            if len(p.ids) or len(p.removed):
                p.table.keep_changes(p.ids, p.removed)

    def _failed(self, peer: _Peer, exc: Exception) -> None:
        peer.failures += 1
        peer.backoff_s = min(self.config.max_backoff_s, max(self.config.interval_s, 2 * peer.backoff_s))
        peer.retry_at = time.monotonic() + peer.backoff_s
        FAILURES.labels(self._shard, str(peer.index)).inc()
        code = exc.code().name if isinstance(exc, grpc.RpcError) else type(exc).__name__
        details = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
        log.log(logging.INFO if peer.failures > 1 else logging.WARNING,
                "sync to serving shard %d (%s) failed (%s: %s), attempt %d; next try in %.1fs, changes kept",
                peer.index, self.config.serving_addresses[peer.index], code, details, peer.failures, peer.backoff_s)
