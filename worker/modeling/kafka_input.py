"""Train from Kafka: `kafka_dataset(...)` in a model's `input_fn` returns batches read from a consumer group.

```python
def input_fn(self, mode):
    return kafka_dataset(KafkaStreamConfig(bootstrap_servers="kafka:9092", topics=["clicks"], group_id="ctr"),
                         features={"user": tf.io.RaggedFeature(tf.int64),
                                   "label": tf.io.FixedLenFeature([], tf.float32)},
                         batch_size=self.batch_size)
```

Each worker reads the partitions the group assigns it; the training runtime positions them at the offsets
of the checkpoint it restores and writes the offsets reached into every checkpoint
(`worker/modeling/stream_source.py`), so each record is trained exactly once into the restored state.
A record that is not a valid example is counted (`<prefix>_kafka_malformed_records_total`, by topic and
partition), logged with its topic/partition/offset and skipped. Batches are the unit of progress: do not
re-batch, shuffle or filter the dataset (`map` and `prefetch` are fine).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from services.kafka_stream import KafkaStreamConfig, PartitionStream
from services.metrics.client import MetricClient
from worker.modeling import stream_source
from worker.modeling.example_records import ExampleDecoder, FeatureSpec, MalformedRecord
from worker.modeling.stream_source import STREAM_BATCH_KEY, BatchPositions, Offsets, Partition

log = logging.getLogger(__name__)

MALFORMED_METRIC = "kafka.malformed_records"


class KafkaSource:
    """One worker's reader of a Kafka input (a `StreamSource`), and the generator behind its dataset."""

    def __init__(self, config: KafkaStreamConfig, decoder: ExampleDecoder, batch_size: int) -> None:
        if not isinstance(config, KafkaStreamConfig):
            raise TypeError(f"expected a KafkaStreamConfig, got {type(config).__name__}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.config, self.decoder, self.batch_size = config, decoder, batch_size
        self.stream = PartitionStream(config)
        self.positions = BatchPositions()
        self.malformed = 0
        self._metrics = MetricClient()

    # --- the StreamSource protocol ------------------------------------------------------------------
    def join(self) -> None:
        self.stream.join()

    def poll_assignment(self) -> frozenset[Partition]:
        return self.stream.poll_assignment()

    def partitions(self) -> frozenset[Partition]:
        return self.stream.partitions()

    def start(self, offsets: Offsets | None) -> None:
        self.positions.reset(self.stream.start(offsets))

    def offsets_through(self, seq: int) -> Offsets:
        return self.positions.through(seq)

    def commit(self, offsets: Offsets) -> None:
        self.stream.commit(offsets)

    def close(self) -> None:
        self.stream.close()

    # --- reading -------------------------------------------------------------------------------------
    def _skip(self, record, exc: MalformedRecord) -> None:
        self.malformed += 1
        self._metrics.emit_counter(MALFORMED_METRIC, 1, {"topic": record.topic, "partition": str(record.partition)})
        log.warning("skipping malformed record %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)

    def batches(self) -> Iterator[dict[str, Any]]:
        if not self.stream.started:
            raise RuntimeError("the Kafka input was read before the training runtime positioned it: train with "
                               "Estimator.train, which starts the stream at the restored checkpoint's offsets")
        cfg = self.config
        pending: list[dict[str, np.ndarray]] = []
        delta: dict[Partition, int] = {}
        seq = 0
        first_pending = last_record = time.monotonic()
        for record in self.stream.records():
            now = time.monotonic()
            if record is not None:
                last_record = now
                delta[(record.topic, record.partition)] = record.offset + 1
                try:
                    decoded = self.decoder.decode(record.value)
                except MalformedRecord as exc:
                    self._skip(record, exc)
                    if not pending:  # done as soon as the batches before it are
                        self.positions.skipped(seq - 1, {(record.topic, record.partition): record.offset + 1})
                else:
                    if not pending:
                        first_pending = now
                    pending.append(decoded)
            idle = cfg.idle_timeout_s is not None and now - last_record >= cfg.idle_timeout_s
            if pending and (len(pending) >= self.batch_size or now - first_pending >= cfg.max_batch_wait_s or idle):
                self.positions.record(seq, delta)
                yield {**self.decoder.batch(pending), STREAM_BATCH_KEY: np.int64(seq)}
                pending, delta, seq = [], {}, seq + 1
            if idle:
                log.info("no record for %.1fs: the Kafka input ends after %d batches", cfg.idle_timeout_s, seq)
                return


def kafka_dataset(config: KafkaStreamConfig, features: FeatureSpec, batch_size: int,
                  record_format: str = "tf_example") -> tf.data.Dataset:
    """Batches of `batch_size` examples (fewer when the stream is quiet) from the group's partitions.

    `features` maps names to `tf.io.RaggedFeature(tf.int64)` (id lists → ragged int64 `[batch, None]`) or
    `tf.io.FixedLenFeature(shape, tf.float32 | tf.int64, default_value=...)` (→ `[batch, *shape]`)."""
    if record_format != "tf_example":
        raise ValueError(f"record_format must be 'tf_example', got {record_format!r}")
    decoder = ExampleDecoder(features)
    source = KafkaSource(config, decoder, batch_size)
    stream_source.register(source)
    signature = {**decoder.signature(), STREAM_BATCH_KEY: tf.TensorSpec([], tf.int64)}
    return tf.data.Dataset.from_generator(source.batches, output_signature=signature)
