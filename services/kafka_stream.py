"""Reading Kafka partitions as a member of a consumer group, positioned by the caller, never auto-committing.

A training job decides where each partition starts (the offsets its restored checkpoint was written at)
and when offsets are committed (after a checkpoint is durable), so the consumer here never commits on its
own and never trusts the group's committed offsets for its position. A rebalance after reading started
that hands this reader the same partitions again (a member that held nothing came or went) continues
where it read up to; one that moves partitions would hand them to another reader mid-way without agreeing
on the position: it is reported as `StreamRebalanced`, which ends the job (a restart resumes from the
last checkpoint).

kafka-python's consumer is not thread-safe: every call on it here holds one lock, so the input thread
can poll while the training thread commits or closes.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

log = logging.getLogger(__name__)

Offsets = dict[str, dict[int, int]]
"""{topic: {partition: offset of the next record}}."""

Partition = tuple[str, int]

_POSITIONS = ("earliest", "latest")

KAFKA_ENV = {"bootstrap_servers": "MONOLITH_KAFKA_BOOTSTRAP_SERVERS", "topics": "MONOLITH_KAFKA_TOPICS",
             "group_id": "MONOLITH_KAFKA_GROUP_ID", "api_version": "MONOLITH_KAFKA_API_VERSION",
             "initial_position": "MONOLITH_KAFKA_INITIAL_POSITION"}
"""The environment `KafkaStreamConfig.from_environ` reads (deploy/k8s/kafka-configmap.yaml sets it)."""


class StreamRebalanced(RuntimeError):
    """The consumer group moved partitions away from this reader after it started reading."""


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    value: bytes


@dataclass(frozen=True)
class KafkaStreamConfig:
    """Where a job's training records come from.

    `api_version` is passed to kafka-python (None: probe the broker; librdkafka's mock cluster needs
    `(2, 3, 0)`). `initial_position` is where a partition starts when the restored checkpoint has no
    offset for it (or there is no checkpoint). `idle_timeout_s` ends the input after that long without a
    record (None: the input never ends; training runs until stopped). `max_batch_wait_s`: a partial batch
    is trained once no record came for that long, so a quiet stream still reaches the model.
    `consumer_options` are any other `KafkaConsumer` keyword arguments (security, fetch sizes, ...).
    """

    bootstrap_servers: str | Sequence[str]  # "h:p,h:p" or a list; kept as a tuple
    topics: str | Sequence[str]
    group_id: str
    api_version: Sequence[int] | None = None
    initial_position: str = "earliest"
    idle_timeout_s: float | None = None
    max_batch_wait_s: float = 1.0
    poll_timeout_ms: int = 200
    consumer_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        servers = self.bootstrap_servers
        servers = tuple(servers.split(",")) if isinstance(servers, str) else tuple(servers)
        topics = (self.topics,) if isinstance(self.topics, str) else tuple(self.topics)
        object.__setattr__(self, "bootstrap_servers", servers)
        object.__setattr__(self, "topics", topics)
        if not servers or not all(isinstance(s, str) and s.rpartition(":")[2].isdigit() for s in servers):
            raise ValueError(f"KafkaStreamConfig.bootstrap_servers must be host:port strings, "
                             f"got {self.bootstrap_servers!r}")
        if not topics or not all(isinstance(t, str) and t for t in topics) or len(set(topics)) != len(topics):
            raise ValueError(f"KafkaStreamConfig.topics must be distinct non-empty names, got {self.topics!r}")
        if not isinstance(self.group_id, str) or not self.group_id:
            raise ValueError(f"KafkaStreamConfig.group_id must be a non-empty string, got {self.group_id!r}")
        if self.api_version is not None:
            version = tuple(self.api_version)
            if not version or not all(isinstance(v, int) and v >= 0 for v in version):
                raise ValueError(f"KafkaStreamConfig.api_version must be a tuple of ints like (2, 3, 0), "
                                 f"got {self.api_version!r}")
            object.__setattr__(self, "api_version", version)
        if self.initial_position not in _POSITIONS:
            raise ValueError(f"KafkaStreamConfig.initial_position must be one of {_POSITIONS}, "
                             f"got {self.initial_position!r}")
        optional = ("idle_timeout_s",) if self.idle_timeout_s is not None else ()
        for name in ("max_batch_wait_s", *optional):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"KafkaStreamConfig.{name} must be > 0, got {value!r}")
        if not isinstance(self.poll_timeout_ms, int) or self.poll_timeout_ms <= 0:
            raise ValueError(f"KafkaStreamConfig.poll_timeout_ms must be an int > 0, got {self.poll_timeout_ms!r}")
        reserved = {"bootstrap_servers", "group_id", "api_version", "enable_auto_commit", "auto_offset_reset"}
        clash = sorted(reserved & set(self.consumer_options))
        if clash:
            raise ValueError(f"KafkaStreamConfig.consumer_options may not set {clash}: they are fields of the config "
                             f"or fixed (offsets are committed only after a checkpoint)")


    @classmethod
    def from_environ(cls, environ: Mapping[str, str], **fields: Any) -> KafkaStreamConfig:
        """The stream a deployment describes in its environment (`KAFKA_ENV`): bootstrap servers and topics
        comma-separated, the consumer group, optionally `api_version` as "2.3.0" and `initial_position`;
        `fields` give the rest (batch waits, consumer options). Every worker of a job reads the same variables,
        so they all join one group."""
        missing = [environ_name for name, environ_name in KAFKA_ENV.items()
                   if name in ("bootstrap_servers", "topics", "group_id") and not environ.get(environ_name)]
        if missing:
            raise ValueError(f"the Kafka input needs {missing} in the environment")
        given: dict[str, Any] = {name: environ[var] for name, var in KAFKA_ENV.items() if environ.get(var)}
        if "api_version" in given:
            try:
                given["api_version"] = tuple(int(v) for v in given["api_version"].split("."))
            except ValueError:
                raise ValueError(f"{KAFKA_ENV['api_version']} must look like 2.3.0, got {given['api_version']!r}") \
                    from None
        given["topics"] = [t for t in given["topics"].split(",") if t]
        return cls(**given, **fields)


class _Listener(ConsumerRebalanceListener):
    """Runs inside `poll` (the stream's lock is held)."""

    def __init__(self, stream: PartitionStream) -> None:
        self.stream = stream

    def on_partitions_revoked(self, revoked) -> None:
        pass

    def on_partitions_assigned(self, assigned) -> None:
        self.stream.reassigned(assigned)


class PartitionStream:
    """One group member: `join()`, `poll_assignment()` until the group is settled, `start(offsets)`, then
    `records()`; `commit(offsets)` after a checkpoint; `close()`."""

    def __init__(self, config: KafkaStreamConfig) -> None:
        self.config = config
        self.started = False
        self.rebalanced: str | None = None
        self._next: dict[TopicPartition, int] = {}  # where reading continues, per assigned partition
        self._lock = threading.Lock()
        self._consumer: KafkaConsumer | None = None
        self._closed = False

    def join(self) -> None:
        cfg = self.config
        options: dict[str, Any] = dict(cfg.consumer_options)
        if cfg.api_version is not None:
            options["api_version"] = cfg.api_version
        with self._lock:
            self._consumer = KafkaConsumer(bootstrap_servers=list(cfg.bootstrap_servers), group_id=cfg.group_id,
                                           enable_auto_commit=False, auto_offset_reset=cfg.initial_position,
                                           **options)
            self._consumer.subscribe(list(cfg.topics), listener=_Listener(self))
        log.info("joined consumer group %r for %s at %s", cfg.group_id, list(cfg.topics),
                 ",".join(cfg.bootstrap_servers))

    def _require(self) -> KafkaConsumer:
        if self._consumer is None or self._closed:
            raise RuntimeError("the Kafka stream is not joined (or already closed)")
        return self._consumer

    def reassigned(self, assigned) -> None:
        """Before `start`: keep every partition paused. After: continue where reading got to if the group
        gave back exactly the partitions this reader had, else stop with `StreamRebalanced`."""
        consumer = self._require()
        if not self.started:
            if assigned:
                consumer.pause(*assigned)
            return
        if set(assigned) != set(self._next):
            had, got = sorted(map(tuple, self._next)), sorted(map(tuple, assigned))
            self.rebalanced = f"it had partitions {had}, the group now gives it {got}"
            return
        for tp, offset in self._next.items():
            consumer.seek(tp, offset)
        log.info("the consumer group rebalanced and gave this worker its partitions back: reading on")

    def poll_assignment(self, timeout_ms: int = 100) -> frozenset[Partition]:
        """Take part in the group's rebalance without reading (every partition stays paused until `start`);
        the partitions the group assigns this member now."""
        with self._lock:
            consumer = self._require()
            try:
                consumer.poll(timeout_ms=timeout_ms)
            except KafkaError as exc:  # a group still settling (members of a killed run expiring): join again
                log.warning("consumer group %r is not settled yet (%s): rejoining", self.config.group_id, exc)
                return frozenset()
            return frozenset((tp.topic, tp.partition) for tp in consumer.assignment())

    def partitions(self) -> frozenset[Partition]:
        """Every partition of the subscribed topics (empty while the metadata is unknown)."""
        with self._lock:
            consumer = self._require()
            found: set[Partition] = set()
            for topic in self.config.topics:
                found.update((topic, p) for p in consumer.partitions_for_topic(topic) or ())
            return frozenset(found)

    def start(self, offsets: Offsets | None) -> dict[Partition, int]:
        """Position every assigned partition at `offsets` (else at `initial_position`) and start reading;
        the position of each assigned partition."""
        with self._lock:
            consumer = self._require()
            assigned = sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
            unknown = [tp for tp in assigned if tp.partition not in (offsets or {}).get(tp.topic, {})]
            for tp in assigned:
                if tp not in unknown:
                    consumer.seek(tp, (offsets or {})[tp.topic][tp.partition])
            if unknown:
                earliest = self.config.initial_position == "earliest"
                (consumer.seek_to_beginning if earliest else consumer.seek_to_end)(*unknown)
            self._next = {tp: int(consumer.position(tp)) for tp in assigned}
            positions = {(tp.topic, tp.partition): offset for tp, offset in self._next.items()}
            consumer.resume(*assigned)
            self.started = True
        log.info("reading %d partitions from %s", len(positions),
                 ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(positions.items())) or "nothing")
        return positions

    def records(self) -> Iterator[Record | None]:
        """Records as they arrive; None after every poll that brought nothing (the caller keeps time)."""
        cfg = self.config
        while True:
            with self._lock:
                if self._closed:
                    return
                batches = self._require().poll(timeout_ms=cfg.poll_timeout_ms)
            if self.rebalanced:
                raise StreamRebalanced(
                    f"consumer group {cfg.group_id!r} moved partitions while this worker was training "
                    f"({self.rebalanced}): restart the job, it resumes from the offsets of its last checkpoint")
            if not batches:
                yield None
                continue
            for tp, recs in batches.items():
                for r in recs:
                    self._next[tp] = r.offset + 1
                    yield Record(tp.topic, tp.partition, r.offset, r.value)

    def commit(self, offsets: Offsets) -> None:
        """Record `offsets` as the group's committed position (for monitoring and lag; never read back)."""
        commits = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for t, parts in offsets.items()
                   for p, o in parts.items()}
        if not commits:
            return
        with self._lock:
            if self._closed:
                return
            try:
                self._require().commit(commits)
            except Exception as exc:  # noqa: BLE001 - a failed commit only delays the lag the group reports
                log.warning("committing offsets to group %r failed: %s", self.config.group_id, exc)

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None and not self._closed:
                self._closed = True
                self._consumer.close(autocommit=False)
