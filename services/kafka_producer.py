"""A fire-and-forget Kafka producer for metric messages: callers never block on the network.

`send()` filters and enqueues; a background thread hands batches to kafka-python's producer; delivery
callbacks count successes and failures (thread-safe, unlike the original). `close()` stops the thread,
sends whatever is still queued and waits for every delivery, so `success + failed == total` after it.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Mapping

from kafka import KafkaProducer

log = logging.getLogger(__name__)

Message = str | bytes


class KProducer:
    """`KProducer(brokers, topic, api_version=None, producer_options=None)`.

    `api_version` is passed to kafka-python (None = probe the broker; librdkafka's mock cluster needs
    `(2, 3, 0)`); `producer_options` are any other `KafkaProducer` keyword arguments (acks, linger_ms, ...).
    """

    def __init__(self, brokers: str | list[str], topic: str, api_version: tuple[int, ...] | None = None,
                 producer_options: Mapping[str, object] | None = None, close_timeout: float = 30.0) -> None:
        if not brokers:
            raise ValueError(f"brokers must name at least one host:port, got {brokers!r}")
        if not topic:
            raise ValueError(f"topic must be a non-empty string, got {topic!r}")
        self.brokers, self.topic, self.close_timeout = brokers, topic, close_timeout
        options = dict(producer_options or {})
        if api_version is not None:
            options["api_version"] = tuple(api_version)
        self._producer = KafkaProducer(bootstrap_servers=brokers, **options)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._queue: queue.Queue[list[bytes]] = queue.Queue()
        self._total = self._success = self._failed = 0
        self._logged = 0
        self._thread = threading.Thread(target=self._poll, name=f"kproducer-{topic}", daemon=True)
        self._thread.start()

    def send(self, msgs: Message | Iterable[Message | None] | None) -> int:
        """Queue messages (a str/bytes or an iterable; None and empty ones dropped); return how many."""
        if msgs is None:
            return 0
        if isinstance(msgs, str | bytes):
            msgs = [msgs]
        batch = [m.encode() if isinstance(m, str) else bytes(m) for m in msgs if m is not None and len(m) > 0]
        if not batch:
            return 0
        with self._lock:
            if self._stopped.is_set():
                raise RuntimeError(f"KProducer for topic {self.topic!r} is closed; {len(batch)} messages not sent")
            self._total += len(batch)
            self._queue.put(batch)
            if self._logged < 10:
                self._logged += 1
                log.info("kafka %s <- %r", self.topic, batch[0][:200])
        return len(batch)

    def _poll(self) -> None:
        while not self._stopped.is_set():
            try:
                batch = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self._produce(batch)

    def _produce(self, batch: list[bytes]) -> None:
        for msg in batch:
            try:
                future = self._producer.send(self.topic, msg)
            except Exception as exc:  # noqa: BLE001 - any producer error counts as a failed send
                self._send_failed(exc)
                continue
            future.add_callback(self._send_success)
            future.add_errback(self._send_failed)

    def _send_success(self, _metadata) -> None:
        with self._lock:
            self._success += 1

    def _send_failed(self, exc) -> None:
        log.warning("kafka send to %s failed: %s", self.topic, exc)
        with self._lock:
            self._failed += 1

    @property
    def closed(self) -> bool:
        return self._stopped.is_set()

    def total(self) -> int:
        with self._lock:
            return self._total

    def success(self) -> int:
        with self._lock:
            return self._success

    def failed(self) -> int:
        with self._lock:
            return self._failed

    def close(self) -> None:
        """Stop the thread, send what is queued, wait for every delivery, close the connection."""
        with self._lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
        self._thread.join()
        while True:
            try:
                self._produce(self._queue.get_nowait())
            except queue.Empty:
                break
        try:
            self._producer.flush(timeout=self.close_timeout)
        except Exception as exc:  # noqa: BLE001 - report and still close the connection
            log.warning("kafka flush to %s did not finish: %s", self.topic, exc)
        self._producer.close(timeout=self.close_timeout)
        log.info("kafka %s closed: total=%d success=%d failed=%d", self.topic, self.total(), self.success(),
                 self.failed())
