"""The dense half of the online sync: every interval, a training shard's dense variables go to the entry servers.

A thread beside the RPC server (`monolith ps --dense-sync-interval-s S --sync-entry-servers A,B,..`). Each round
it reads the current value of every dense variable the shard holds and sends each entry server (`monolith serve
--dense-sync`, serving/dense_sync_receiver.py) one `EntrySync/SyncDense` message holding all of them, stamped
with a version that only grows (milliseconds of the clock, as the row sync's). Dense values are sent whole,
so there is nothing to keep between rounds: an entry server that was down or restarted is current again
after the first round that reaches it. Entry servers are replicas: each one gets every value. Every round
resolves each configured host name to all its addresses and sends to each, so one name of a set of replicas
(a Kubernetes headless Service in front of an entry Deployment) reaches every replica, however it scales.

An entry server that is down, hung or refusing costs training nothing: the sync runs in its own thread, holds
no lock of the shard while sending, sends to the entry servers in parallel, and skips a failing one for a
backoff that doubles from the interval up to `max_backoff_s`. A shard holding no dense variables sends nothing.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from prometheus_client import Counter

from protos import ps_pb2
from ps.service.server import grpc_options
from ps.store.shard_state import ShardState
from services.periodic import Periodic
from services.transport_security import TransportSecurity

log = logging.getLogger(__name__)

SYNC_DENSE_METHOD = "/" + ps_pb2.DESCRIPTOR.services_by_name["EntrySync"].full_name + "/SyncDense"
ROUNDS_SENT = Counter("monolith_ps_dense_sync_total", "dense sync messages an entry server applied",
                      ["shard", "entry"])
FAILURES = Counter("monolith_ps_dense_sync_failures_total", "dense sync messages an entry server did not take "
                   "(down, refused)", ["shard", "entry"])


@dataclass(frozen=True)
class DenseSyncConfig:
    """Where and how often a training shard sends its dense variables."""

    entry_addresses: Sequence[str]
    """host:port of the entry servers (`monolith serve --dense-sync`); a host name stands for all its addresses."""
    interval_s: float
    timeout_s: float = 10.0
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.entry_addresses or not all(a and ":" in a for a in self.entry_addresses):
            raise ValueError(f"the dense sync needs the entry servers as host:port,... (--sync-entry-servers), "
                             f"got {list(self.entry_addresses)}")
        if not self.interval_s > 0:
            raise ValueError(f"--dense-sync-interval-s must be > 0, got {self.interval_s}")
        if not (self.timeout_s > 0 and self.max_backoff_s > 0):
            raise ValueError("dense sync timeout and backoff must be > 0")


@dataclass
class _Entry:
    """One entry server: its channel and what the sender knows of it."""

    address: str
    channel: grpc.Channel
    call: Callable
    acked: int = 0
    retry_at: float = 0.0
    backoff_s: float = 0.0
    failures: int = 0


Resolver = Callable[[str, int], list[tuple[int, str]]]
"""(host, port) -> [(address family, ip)]."""


def _getaddrinfo(host: str, port: int) -> list[tuple[int, str]]:
    return [(family, str(sockaddr[0])) for family, _t, _p, _c, sockaddr in
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def resolve_entries(addresses: Sequence[str], resolve: Resolver = _getaddrinfo) -> list[str]:
    """Every ip:port the configured host:port addresses stand for, each once, in order. A name that does not
    resolve now (no replica up, DNS trouble) stands for none this round, with a log line."""
    out: list[str] = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        try:
            found = resolve(host.strip("[]"), int(port))
        except (OSError, ValueError) as exc:
            log.info("entry server name %s does not resolve now: %s", address, exc)
            continue
        for family, ip in found:
            resolved = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
            if resolved not in out:
                out.append(resolved)
    return out


class DenseSyncSender:
    def __init__(self, state: ShardState, config: DenseSyncConfig, security: TransportSecurity | None = None,
                 resolve: Resolver = _getaddrinfo) -> None:
        self.state = state
        self.config = config
        self._security = security or TransportSecurity()
        self._resolve = resolve
        self.entries: dict[str, _Entry] = {}
        """By ip:port: the entry servers the configured addresses stood for at the last round."""
        self._version = 0
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ps-dense-sync")
        self._loop: Periodic | None = None
        self._shard = str(state.shard_index)
        self.rounds = 0

    def start(self, stop: threading.Event | None = None) -> None:
        """Sync every interval in a thread until `stop` is set or `close`."""
        self._loop = Periodic("ps-dense-sync", self.config.interval_s, self.sync_once, log, stop).start()
        log.info("dense sync every %.3gs to the entry servers %s", self.config.interval_s,
                 list(self.config.entry_addresses))

    def close(self, timeout: float | None = None) -> None:
        """Stop the loop (sets the `stop` event it was started with), wait for the round in flight."""
        if self._loop is not None:
            self._loop.close(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for entry in self.entries.values():
            entry.channel.close()

    def _current_entries(self) -> list[_Entry]:
        """The entry servers of this round: new addresses get a channel, vanished ones are closed."""
        addresses = resolve_entries(self.config.entry_addresses, self._resolve)
        for gone in set(self.entries) - set(addresses):
            self.entries.pop(gone).channel.close()
        options = [*grpc_options(512 << 20), ("grpc.initial_reconnect_backoff_ms", 200),
                   ("grpc.min_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)]
        for address in addresses:
            if address not in self.entries:
                channel = self._security.channel(address, options)
                call = channel.unary_unary(SYNC_DENSE_METHOD,
                                           request_serializer=ps_pb2.SyncDenseRequest.SerializeToString,
                                           response_deserializer=ps_pb2.SyncDenseResponse.FromString)
                self.entries[address] = _Entry(address, channel, call)
        return [self.entries[a] for a in addresses]

    def _next_version(self) -> int:
        self._version = max(self._version + 1, int(time.time() * 1000))
        return self._version

    def message(self) -> ps_pb2.SyncDenseRequest | None:
        """This round's message: every dense variable's current value (None: the shard holds none)."""
        if not self.state.dense:
            return None
        version, taken_at = self._next_version(), time.time()
        request = ps_pb2.SyncDenseRequest(source_shard=self.state.shard_index,
                                          source_num_shards=self.state.num_shards, version=version,
                                          snapshot_time=taken_at)
        for name, shape, values in self.state.dense_pull([]):
            request.variables.add(name=name, shape=list(shape), values=values.astype("<f4").tobytes())
        return request

    def sync_once(self) -> dict[str, str]:
        """One round: {entry server ip:port: outcome} ("sent", "stale", "backoff", "failed"; empty: nothing
        to send, or no entry server resolved)."""
        request = self.message()
        if request is None:
            return {}
        futures = {e.address: self._pool.submit(self._send, e, request) for e in self._current_entries()}
        outcomes = {a: f.result() for a, f in futures.items()}
        self.rounds += 1
        return outcomes

    def _send(self, entry: _Entry, request: ps_pb2.SyncDenseRequest) -> str:
        if time.monotonic() < entry.retry_at:
            return "backoff"
        try:
            answer = entry.call(request, timeout=self.config.timeout_s)
        except Exception as exc:  # down, deadline, refused: the next round sends the values of then
            self._failed(entry, exc)
            return "failed"
        entry.acked, entry.failures, entry.backoff_s, entry.retry_at = answer.known_version, 0, 0.0, 0.0
        if not answer.applied:  # it holds a newer version of this shard (a clock that went back): say so
            log.warning("entry server %s holds dense version %d of shard %s, newer than %d: not applied",
                        entry.address, answer.known_version, self._shard, request.version)
            return "stale"
        ROUNDS_SENT.labels(self._shard, entry.address).inc()
        return "sent"

    def _failed(self, entry: _Entry, exc: Exception) -> None:
        entry.failures += 1
        entry.backoff_s = min(self.config.max_backoff_s, max(self.config.interval_s, 2 * entry.backoff_s))
        entry.retry_at = time.monotonic() + entry.backoff_s
        FAILURES.labels(self._shard, entry.address).inc()
        code = exc.code().name if isinstance(exc, grpc.RpcError) else type(exc).__name__
        details = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
        log.log(logging.INFO if entry.failures > 1 else logging.WARNING,
                "dense sync to entry server %s failed (%s: %s), attempt %d; next try in %.1fs", entry.address,
                code, details, entry.failures, entry.backoff_s)
