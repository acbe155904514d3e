"""The Kafka training input's parts: config, record decoding, positions, manifests, barrier notes; and a
local-mode job that resumes from its checkpoint's offsets against a real broker (librdkafka's mock)."""
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tensorflow as tf
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import REGISTRY

from ps.errors import CheckpointError
from ps.persist import checkpoint as layout
from ps.persist.coordinator import CheckpointCoordinator
from ps.store.shard_state import ShardState
from services.kafka_stream import KafkaStreamConfig
from tests.processes import wait_for
from tests.stream_models import API, CountingModel, message
from worker.modeling.example_records import ExampleDecoder, MalformedRecord
from worker.modeling.stream_source import BatchPositions
from worker.runtime import stream_checkpoints
from worker.runtime.estimator import Estimator
from worker.runtime.run_config import RunConfig


def test_config_is_validated_and_normalized():
    cfg = KafkaStreamConfig(bootstrap_servers="a:1,b:2", topics="t", group_id="g", api_version=[2, 3, 0])
    assert cfg.bootstrap_servers == ("a:1", "b:2") and cfg.topics == ("t",) and cfg.api_version == (2, 3, 0)
    bad = [dict(bootstrap_servers="nohost"), dict(topics=[]), dict(topics=["t", "t"]), dict(group_id=""),
           dict(api_version=("2",)), dict(initial_position="middle"), dict(idle_timeout_s=0),
           dict(max_batch_wait_s=-1), dict(poll_timeout_ms=0), dict(consumer_options={"enable_auto_commit": True})]
    for override in bad:
        args = dict(bootstrap_servers="h:9092", topics=["t"], group_id="g") | override
        with pytest.raises(ValueError, match=f"KafkaStreamConfig.{next(iter(override))}"):
            KafkaStreamConfig(**args)


def _example(**features) -> bytes:
    def feature(v):
        if isinstance(v, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
        if all(isinstance(x, int) for x in v):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=v))
        return tf.train.Feature(float_list=tf.train.FloatList(value=v))
    return tf.train.Example(features=tf.train.Features(
        feature={k: feature(v) for k, v in features.items()})).SerializeToString()


def test_decoder_batches_good_records_and_names_what_is_wrong_with_bad_ones():
    decoder = ExampleDecoder({"ids": tf.io.RaggedFeature(tf.int64),
                              "dense": tf.io.FixedLenFeature([2], tf.float32),
                              "label": tf.io.FixedLenFeature([], tf.float32, default_value=0.5)})
    good = [decoder.decode(_example(ids=[1, 2, 3], dense=[0.5, 1.5], label=[1.0])),
            decoder.decode(_example(dense=[2.0, 3.0]))]  # no ids: empty; no label: its default
    batch = decoder.batch(good)
    assert batch["ids"].to_list() == [[1, 2, 3], []]
    np.testing.assert_array_equal(batch["dense"], [[0.5, 1.5], [2.0, 3.0]])
    np.testing.assert_array_equal(batch["label"], [1.0, 0.5])
    for record, why in [(b"\x0a\xff\xff", "not a serialized tf.train.Example"),
                        (_example(ids=[1.5], dense=[1.0, 2.0]), "'ids' is a float_list, expected a int64_list"),
                        (_example(dense=[1.0]), "'dense' has 1 values, shape \\[2\\] needs 2"),
                        (_example(ids=[1]), "'dense' is missing and has no default"),
                        (_example(dense=[1.0, float("nan")]), "'dense' holds NaN or Inf"),
                        (_example(dense=[1.0, 2.0], label=b"x"), "'label' is a bytes_list")]:
        with pytest.raises(MalformedRecord, match=why):
            decoder.decode(record)
    with pytest.raises(ValueError, match="only plain int64 RaggedFeatures"):
        ExampleDecoder({"x": tf.io.RaggedFeature(tf.float32)})
    with pytest.raises(ValueError, match="expected tf.io.RaggedFeature or tf.io.FixedLenFeature"):
        ExampleDecoder({"x": tf.io.VarLenFeature(tf.int64)})


def test_positions_fold_batches_in_order():
    positions = BatchPositions()
    positions.reset({("t", 0): 5, ("t", 1): 0})
    positions.record(0, {("t", 0): 8})
    positions.record(1, {("t", 1): 3, ("t", 0): 9})
    positions.record(2, {("t", 1): 7})
    assert positions.through(-1) == {"t": {0: 5, 1: 0}}
    assert positions.through(1) == {"t": {0: 9, 1: 3}}
    assert positions.through(1) == {"t": {0: 9, 1: 3}}
    with pytest.raises(ValueError, match="asked after batch 1"):
        positions.through(0)
    with pytest.raises(ValueError, match="batch 3 was never produced"):
        positions.through(3)
    positions.skipped(2, {("t", 0): 12})  # bad records after batch 2, none waiting for batch 3
    positions.skipped(2, {("t", 1): 8})
    assert positions.through(2) == {"t": {0: 12, 1: 8}}
    positions.skipped(1, {("t", 0): 99})  # stale: batch 2 came after those
    assert positions.through(2) == {"t": {0: 12, 1: 8}}


def test_worker_offsets_merge_only_when_disjoint():
    a, b = {"t": {0: 4, 1: 2}}, {"t": {2: 9}, "u": {0: 1}}
    assert stream_checkpoints.decode(stream_checkpoints.encode(a)) == a
    assert stream_checkpoints.decode(stream_checkpoints.encode(None)) is None
    assert stream_checkpoints.merge([a, b]) == {"t": {0: 4, 1: 2, 2: 9}, "u": {0: 1}}
    with pytest.raises(RuntimeError, match=r"t\[1\] were read by two workers"):
        stream_checkpoints.merge([a, {"t": {1: 3}}])


def test_manifest_holds_offsets_and_old_manifests_still_load(tmp_path):
    state = ShardState(0, 1)
    state.create_table("t", {"segments": [{"dim": 1, "optimizer": {"type": "sgd", "learning_rate": 0.1}}]})
    coordinator = CheckpointCoordinator(tmp_path, 1)
    save = lambda path, step: state.save(str(path), step)  # noqa: E731
    old = coordinator.save(1, save)
    assert layout.stream_offsets(old) is None  # a job without a stream (and manifests from before offsets)
    new = coordinator.save(2, save, {"clicks": {3: 17, 0: 5}})
    assert layout.stream_offsets(new) == {"clicks": {0: 5, 3: 17}}
    assert layout.latest_checkpoint(tmp_path) == new
    with pytest.raises(CheckpointError, match="bad stream offset"):
        coordinator.save(3, save, {"clicks": {0: -1}})
    assert layout.latest_checkpoint(tmp_path) == new  # the refused checkpoint never became complete


def test_barrier_notes_are_kept_per_participant():
    state = ShardState(0, 1)
    assert state.arrive("L/x", "worker:0", 2, b"a") == (["worker:0"], 2)
    state.arrive("L/x", "worker:1", 2)
    assert state.notes("L/x") == {"worker:0": b"a"}
    state.arrive("L/x", "worker:0", 2, b"b")  # a new note replaces the old one
    state.arrive("L/x", "worker:0", 2)  # re-arriving without a note keeps it
    state.arrive("L/x", "worker:1", 2, b"c")
    assert state.notes("L/x") == {"worker:0": b"b", "worker:1": b"c"}


def _malformed_count(topic: str) -> float:
    total = 0.0
    for partition in range(4):
        value = REGISTRY.get_sample_value("monolith_training_kafka_malformed_records_total",
                                          {"topic": topic, "partition": str(partition)})
        total += value or 0.0
    return total


@pytest.mark.slow
def test_local_job_resumes_from_its_checkpoint_offsets(brokers, tmp_path, monkeypatch):
    """Run 1 trains 40 messages (one malformed record skipped and counted), run 2 (a new Estimator on the
    same model dir) only the 25 produced since: every row 1, the manifest and the group's committed
    offsets at the end of the topic."""
    topic = f"local-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    for key, value in {"STREAM_BROKERS": brokers, "STREAM_TOPIC": topic, "STREAM_GROUP": group,
                       "STREAM_IDLE_S": "1.5", "STREAM_BATCH": "8"}.items():
        monkeypatch.setenv(key, value)
    producer = KafkaProducer(bootstrap_servers=brokers, api_version=API)

    def produce(ids, garbage=0):
        for i in ids:
            producer.send(topic, message(i))
        for _ in range(garbage):
            producer.send(topic, b"\x0a\xff\xff")
        producer.flush(30)

    def run(save_secs=600.0):
        est = Estimator(CountingModel(), RunConfig(model_dir=str(tmp_path), save_checkpoints_secs=save_secs))
        try:
            stats = est.train(None)
            return stats, est.backend.lookup({"id": np.arange(80, dtype=np.int64)})["id"].ravel()
        finally:
            est.close()

    def consumed():
        path = layout.latest_checkpoint(tmp_path)
        offsets = layout.stream_offsets(path) if path is not None else None
        return sum((offsets or {}).get(topic, {}).values())

    produce(range(40), garbage=1)
    # the stream goes quiet after 41 records: checkpoints every 0.5 s still come while the worker waits
    # for its next batch, long before the input ends (6 s without a record)
    monkeypatch.setenv("STREAM_IDLE_S", "6")
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(run, 0.5)
        wait_for(lambda: consumed() == 41 or first.done(), timeout=120, what="a checkpoint of every record")
        assert not first.done(), "no checkpoint while the stream was quiet"
        stats, rows = first.result()
    assert stats["examples"] == 40 and _malformed_count(topic) == 1
    np.testing.assert_array_equal(rows, [1.0] * 40 + [0.0] * 40)
    monkeypatch.setenv("STREAM_IDLE_S", "1.5")
    produce(range(40, 65))
    stats, rows = run()
    assert stats["examples"] == 25
    np.testing.assert_array_equal(rows, [1.0] * 65 + [0.0] * 15)
    offsets = layout.stream_offsets(layout.latest_checkpoint(tmp_path))
    assert sum(offsets[topic].values()) == 66
    consumer = KafkaConsumer(bootstrap_servers=brokers, group_id=group, api_version=API, enable_auto_commit=False)
    try:
        committed = {p: consumer.committed(TopicPartition(topic, p)) for p in offsets[topic]}
    finally:
        consumer.close()
    assert committed == offsets[topic]


def test_the_deployed_streaming_model_trains_from_the_stream_its_environment_names(brokers, tmp_path, monkeypatch):
    """deploy/k8s runs `StreamingFFMModel` with the stream in MONOLITH_KAFKA_* (KafkaStreamConfig.from_environ):
    two steps of 64 FFM examples from the broker, every one trained once."""
    from worker.models.ffm import NUM_EXAMPLES, StreamingFFMModel, generate_ffm_examples, make_examples

    topic = f"ffm-{uuid.uuid4().hex[:8]}"
    for key, value in {"MONOLITH_KAFKA_BOOTSTRAP_SERVERS": brokers, "MONOLITH_KAFKA_TOPICS": topic,
                       "MONOLITH_KAFKA_GROUP_ID": f"g-{topic}", "MONOLITH_KAFKA_API_VERSION": "2.3.0"}.items():
        monkeypatch.setenv(key, value)
    producer = KafkaProducer(bootstrap_servers=brokers, api_version=API)
    for record in make_examples(generate_ffm_examples(num_examples=2 * NUM_EXAMPLES)):
        producer.send(topic, record)
    producer.flush(30)
    producer.close()
    est = Estimator(StreamingFFMModel(), RunConfig(model_dir=str(tmp_path)))
    try:
        stats = est.train(2)
    finally:
        est.close()
    assert stats["examples"] == 2 * NUM_EXAMPLES and stats["global_step"] == 2, stats
