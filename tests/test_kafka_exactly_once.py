"""Training from Kafka exactly once across kill -9 of a worker and of a PS shard (real processes, real broker).

`monolith local` runs 2 PS shards and 2 workers reading a 4-partition topic through kafka-python from
librdkafka's mock cluster, while a producer keeps writing numbered messages (and a few malformed ones).
Launch 1 is killed (-9 of a training worker) after it checkpointed, launch 2 likewise (-9 of a PS
shard), launch 3 drains the topic and ends when the stream goes quiet. The counting model
(tests/stream_models.py) adds 1 to message i's row each time it is trained: every row must read 1.
"""
import os
import re
import signal
import threading
import time
import uuid

import numpy as np
import pytest
from kafka import KafkaProducer

from ps.persist.checkpoint import latest_checkpoint, read_meta, stream_offsets
from ps.store.shard_state import ShardState
from tests.processes import wait_for
from tests.stream_models import API, message

pytestmark = pytest.mark.slow

MALFORMED_EVERY = 97


class Producer(threading.Thread):
    """Numbered messages at a steady rate until stopped; every MALFORMED_EVERY-th record is garbage."""

    def __init__(self, brokers: str, topic: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.producer = KafkaProducer(bootstrap_servers=brokers, api_version=API, linger_ms=5)
        self.topic, self.rate = topic, rate
        self.stop = threading.Event()
        self.ids = 0
        self.records = 0

    def send_one(self) -> None:
        if self.records % MALFORMED_EVERY == MALFORMED_EVERY - 1:
            self.producer.send(self.topic, b"\x0a\xff\xff not an example")
        else:
            self.producer.send(self.topic, message(self.ids))
            self.ids += 1
        self.records += 1

    def run(self) -> None:
        while not self.stop.wait(1.0 / self.rate):
            self.send_one()

    def finish(self) -> None:
        self.stop.set()
        self.join(10)
        self.producer.flush(30)
        self.producer.close()


def launch(processes, model_dir, env, name):
    return processes.start(["-m", "launch.cli", "local", "--num-ps", "2", "--num-workers", "2",
                            "--model", "tests.stream_models:CountingModel", "--model-dir", str(model_dir),
                            "--", "--save-checkpoints-secs", "1.5"], env=env, name=name)


def child_pid(processes, proc, role: str, what: str) -> int:
    def find():
        m = re.search(rf"\[{role}\] .*started {what}.*\(pid (\d+)\)", processes.log_of(proc))
        return int(m.group(1)) if m else None
    return wait_for(find, timeout=120, what=f"{role}'s process")


def checkpoint_after(model_dir, newer_than: int, timeout: float) -> tuple[int, int]:
    """Wait for a complete checkpoint with input offsets past `newer_than` records; (step, records)."""
    def find():
        path = latest_checkpoint(model_dir)
        if path is None:
            return None
        offsets = stream_offsets(path) or {}
        consumed = sum(o for parts in offsets.values() for o in parts.values())
        return (read_meta(path, "ckpt")["step"], consumed) if consumed > newer_than else None
    return wait_for(find, timeout=timeout, interval=0.3, what=f"a checkpoint past {newer_than} records")


def test_every_message_trained_exactly_once_through_worker_and_ps_kills(brokers, processes, tmp_path):
    topic = f"clicks-{uuid.uuid4().hex[:8]}"
    env = {"STREAM_BROKERS": brokers, "STREAM_TOPIC": topic, "STREAM_GROUP": f"trainers-{topic}",
           "STREAM_BATCH": "8", "STREAM_IDLE_S": "2.5"}
    producer = Producer(brokers, topic, rate=25)
    producer.send_one()  # creates the topic (4 partitions) before any consumer subscribes
    producer.producer.flush(30)
    producer.start()
    model_dir = tmp_path / "model"

    first = launch(processes, model_dir, env, "launch1")
    _, consumed = checkpoint_after(model_dir, 0, timeout=240)
    time.sleep(0.5)  # trained past the checkpoint, not yet saved
    os.kill(child_pid(processes, first, "worker:1", "training"), signal.SIGKILL)
    assert first.wait(90) != 0

    second = launch(processes, model_dir, env, "launch2")
    _, consumed = checkpoint_after(model_dir, consumed, timeout=240)
    time.sleep(0.5)
    os.kill(child_pid(processes, second, "ps:1", "ps:1"), signal.SIGKILL)
    assert second.wait(90) != 0
    producer.finish()

    third = launch(processes, model_dir, env, "launch3")
    assert third.wait(240) == 0, processes.log_of(third)[-3000:]

    final = latest_checkpoint(model_dir)
    offsets = stream_offsets(final)
    assert sum(offsets[topic].values()) == producer.records  # every record, malformed ones too, consumed
    assert sorted(offsets[topic]) == [0, 1, 2, 3]
    state = ShardState(0, 1)
    state.restore(str(final))
    table = state.table("id")
    counts = table.lookup(np.arange(producer.ids, dtype=np.int64)).ravel()
    wrong = {int(i): float(c) for i, c in enumerate(counts) if c != 1.0}
    assert not wrong, f"{len(wrong)} of {producer.ids} messages not trained exactly once: {list(wrong.items())[:20]}"
    assert table.size == producer.ids
    logs = "".join(processes.log_of(p) for p in (first, second, third))
    assert "skipping malformed record" in logs
