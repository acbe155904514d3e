"""KProducer and KafkaMetricHook against a real Kafka-protocol broker (librdkafka's mock cluster)."""
import json
import threading
import time
import uuid

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from services.kafka_producer import KProducer
from services.ports import free_port
from tests.processes import wait_for
from worker.modeling.deep_insight import write_deep_insight
from worker.modeling.hooks.base import StepContext, StepResult
from worker.modeling.hooks.kafka_metric import KafkaMetricHook

API = (2, 3, 0)
pytestmark = pytest.mark.slow


def consume(brokers: str, topic: str, expected: int, timeout: float = 30) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=brokers, api_version=API, enable_auto_commit=False)
    try:
        parts = wait_for(lambda: consumer.partitions_for_topic(topic), timeout=timeout, what=f"topic {topic}")
        consumer.assign([TopicPartition(topic, p) for p in parts])
        consumer.seek_to_beginning()
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                got.extend(r.value for r in records)
        for records in consumer.poll(timeout_ms=500).values():
            got.extend(r.value for r in records)
        return got
    finally:
        consumer.close()


def test_send_filters_and_counts(brokers):
    topic = f"filter-{uuid.uuid4().hex[:8]}"
    producer = KProducer(brokers, topic, api_version=API)
    assert producer.send(None) == 0
    assert producer.send([]) == 0
    assert producer.send("") == 0
    assert producer.send("one") == 1
    assert producer.send(b"two") == 1
    assert producer.send([None, b"", "three", b"four", ""]) == 2
    producer.close()
    assert (producer.total(), producer.success(), producer.failed()) == (4, 4, 0)
    assert sorted(consume(brokers, topic, 4)) == [b"four", b"one", b"three", b"two"]
    with pytest.raises(RuntimeError, match="is closed; 1 messages not sent"):
        producer.send("late")


def test_close_loses_nothing_under_concurrent_senders(brokers):
    topic = f"bulk-{uuid.uuid4().hex[:8]}"
    producer = KProducer(brokers, topic, api_version=API, producer_options={"linger_ms": 5, "acks": "all"})
    per_thread, threads = 1500, 4

    def sender(t):
        for i in range(0, per_thread, 50):
            producer.send([f"{t}:{j}" for j in range(i, i + 50)])

    workers = [threading.Thread(target=sender, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    producer.close()
    n = per_thread * threads
    assert (producer.total(), producer.success(), producer.failed()) == (n, n, 0)
    got = consume(brokers, topic, n)
    assert len(got) == n
    assert set(got) == {f"{t}:{j}".encode() for t in range(threads) for j in range(per_thread)}


def test_unreachable_broker_counts_failures():
    dead = f"127.0.0.1:{free_port()}"
    producer = KProducer(dead, "nowhere", api_version=API, producer_options={"max_block_ms": 300}, close_timeout=2)
    producer.send(["a", "b"])
    producer.close()
    assert (producer.total(), producer.success(), producer.failed()) == (2, 0, 2)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="brokers"):
        KProducer("", "t")
    with pytest.raises(ValueError, match="topic"):
        KProducer("127.0.0.1:1", "")


def test_hook_needs_brokers_and_topic(monkeypatch):
    monkeypatch.delenv("KAFKA_BROKER_LIST", raising=False)
    monkeypatch.delenv("KAFKA_TOPIC_NAME", raising=False)
    with pytest.raises(ValueError, match=r"\$KAFKA_BROKER_LIST"):
        KafkaMetricHook(topic="t")
    with pytest.raises(ValueError, match=r"\$KAFKA_TOPIC_NAME"):
        KafkaMetricHook(brokers="127.0.0.1:1")


def test_hook_sends_deep_insight_messages(brokers, monkeypatch):
    topic = f"deep-insight-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("KAFKA_BROKER_LIST", brokers)
    monkeypatch.setenv("KAFKA_TOPIC_NAME", topic)
    hook = KafkaMetricHook(api_version=API)
    hook.begin()
    rng = np.random.default_rng(0)
    sent = []
    for step in range(5):
        ctx = StepContext(global_step=step)
        assert hook.before_step(ctx) == ["deep_insight_op"]
        uids = np.arange(step * 64, step * 64 + 64, dtype=np.int64)
        features = {"uid": uids, "req_time": np.full(64, 1_700_000_000 + step), "sample_rate": np.ones(64)}
        msgs = write_deep_insight(features, 0.5, "kafka_model", labels=rng.integers(0, 2, 64).astype(np.float32),
                                  preds=rng.random(64).astype(np.float32), enable_kafka_metrics=True,
                                  use_zero_train_time=True)
        sent += [m for m in msgs if m]
        hook.after_step(ctx, StepResult(global_step=step + 1, fetches={"deep_insight_op": msgs}))
    hook.after_step(StepContext(5), StepResult(global_step=6, fetches={}))
    hook.end()
    assert 100 < len(sent) < 220
    assert (hook.producer.total(), hook.producer.success(), hook.producer.failed()) == (len(sent), len(sent), 0)
    got = consume(brokers, topic, len(sent))
    assert sorted(got) == sorted(sent)
    records = [json.loads(m) for m in got]
    assert {r["model_name"] for r in records} == {"kafka_model"}
    assert all(r["train_time"] == 0 and set(r["predict"]) == {"ctr_head"} for r in records)
    with pytest.raises(RuntimeError, match="outside begin"):
        hook.after_step(StepContext(6), StepResult(global_step=7, fetches={"deep_insight_op": sent[:1]}))
