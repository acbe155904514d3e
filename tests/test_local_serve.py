"""`monolith local --serve`: the whole real-time loop on one machine, from a real Kafka-protocol broker
(librdkafka's mock cluster) to a Predict through TF Serving's own stub; rows trained after serving started
reach the serving PS through the online sync, the dense variables reach the entry; Ctrl-C stops every
process it started."""
from __future__ import annotations

import os
import re
import signal
import uuid

import grpc
import numpy as np
import pytest
import tensorflow as tf
from kafka import KafkaProducer
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from ps.client.client import PSClient
from tests.processes import wait_for
from tests.test_local_cluster import alive, pids_in

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

MODEL = "worker.models.movielens_stream:MovieLensStreamModel"
FRESH_UID = 77_777  # a user no record has before serving starts


def records(n: int, uid: int | None = None, seed: int = 0) -> list[bytes]:
    from worker.models.movielens_stream import stream_record

    rng = np.random.default_rng(seed)
    return [stream_record({"uid": [uid if uid is not None else int(rng.integers(50))], "item": [int(rng.integers(80))],
                           "age": [1], "gender": [int(rng.integers(2))], "occupation": [3], "zip": [4],
                           "genres": [int(g) for g in rng.integers(18, size=2)]}, float(rng.integers(2)))
            for _ in range(n)]


def predict_request(uid: int) -> predict_pb2.PredictRequest:
    from protos import example_pb2

    ex = example_pb2.Example()
    for name, value in (("uid", uid), ("item", 3), ("age", 1), ("gender", 0), ("occupation", 3), ("zip", 4),
                        ("genres", 5)):
        ex.named_feature.add(name=name).feature.fid_v2_list.value.append(value)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "default"
    req.inputs["examples"].CopyFrom(tf.make_tensor_proto(np.array([ex.SerializeToString()] * 2, dtype=object)))
    return req


def test_local_serve_answers_predict_and_syncs_rows_trained_after_it_started(brokers, processes, tmp_path):
    topic = f"ratings-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=brokers, api_version=(2, 3, 0), linger_ms=5)
    for r in records(256):
        producer.send(topic, r)
    producer.flush(30)
    env = {"MONOLITH_STREAM_BROKERS": brokers, "MONOLITH_STREAM_TOPIC": topic, "MONOLITH_STREAM_GROUP": topic,
           "MONOLITH_STREAM_API": "2.3.0", "MONOLITH_STREAM_BATCH": "32"}
    local = processes.start(["-m", "launch.cli", "local", "--num-ps", "1", "--num-workers", "1", "--model", MODEL,
                             "--model-dir", str(tmp_path / "model"), "--serve", "--num-serving-ps", "2",
                             "--sync-interval-s", "0.5", "--", "--save-checkpoints-secs", "2"], env=env, name="local")

    def log():
        if local.poll() is not None:
            raise AssertionError(processes.log_of(local)[-6000:])
        return processes.log_of(local)

    planned = wait_for(lambda: re.search(r"sync every 0.5s to serving PS (\S+); the entry will answer Predict on "
                                         r"(\S+) once", log()), 60, what="the serving plan")
    serving, entry = planned.group(1).split(","), planned.group(2)
    training = "127.0.0.1:" + re.search(r"ps:0 \(pid \d+, port (\d+)\)", log()).group(1)
    wait_for(lambda: re.search(r"\[serve:0\] .*ready: serving model default version \d+ on", log()), 300,
             what="the entry serving the first export")

    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(entry))
    answer = stub.Predict(predict_request(FRESH_UID), timeout=30)
    pred = tf.make_ndarray(next(iter(answer.outputs.values())))
    assert pred.shape[0] == 2 and np.isfinite(pred).all() and ((pred > 0) & (pred < 1)).all()

    with PSClient(serving) as served, PSClient([training]) as trained:
        assert not served.lookup("uid", [FRESH_UID]).any()  # absent from the export: zeros
        for r in records(64, uid=FRESH_UID, seed=1):  # trained after serving started
            producer.send(topic, r)
        producer.flush(30)
        wait_for(lambda: served.lookup("uid", [FRESH_UID]).any(), 60, interval=0.2,
                 what="the freshly trained row on the serving PS")
        # once training of it is over, the serving row is the training row (float32 sync)
        wait_for(lambda: np.array_equal(served.lookup("uid", [FRESH_UID]), trained.lookup("uid", [FRESH_UID])),
                 30, interval=0.3, what="the serving row equal to the training row")
    producer.close()
    after = tf.make_ndarray(next(iter(stub.Predict(predict_request(FRESH_UID), timeout=30).outputs.values())))
    assert not np.allclose(after, pred)  # the served prediction moved with the synced row
    wait_for(lambda: re.search(r"\[serve:0\] .*dense sync: first values of training shard 0 applied", log()), 30,
             what="the entry taking the dense sync")

    pids = pids_in(processes.log_of(local))
    os.kill(local.pid, signal.SIGINT)
    assert local.wait(90) == 128 + signal.SIGINT
    text = processes.log_of(local)
    assert "interrupted (signal 2): stopping the cluster" in text
    assert re.search(r"serving-ps:1 stopped", text) and re.search(r"serve:0 stopped", text), text[-3000:]
    leftovers = [p for p in pids | pids_in(text) if alive(p)]
    assert not leftovers, f"orphans left behind: {leftovers}"
