"""A model that counts how often each Kafka message is trained (not collected by pytest).

Every message is a `tf.train.Example` with one id (the message's number). The id's dim-1 row starts at 0
and the loss is minus the sum of the batch's rows, so with SGD(1.0) every occurrence of an id in a trained
batch adds exactly 1 to its row: after a run, a row of 1 means trained exactly once, 0 lost, 2 duplicated.
The stream is configured from the environment, so the same class runs in every process of a job.
"""
from __future__ import annotations

import os

import tensorflow as tf

from services.kafka_stream import KafkaStreamConfig
from worker.modeling.estimator_spec import EstimatorSpec
from worker.modeling.kafka_input import kafka_dataset
from worker.modeling.native_model import MonolithModel
from worker.modeling.segment_configs import SgdOptimizer, ZerosInitializer

API = (2, 3, 0)  # what kafka-python needs against librdkafka's mock cluster


def message(i: int) -> bytes:
    feature = {"id": tf.train.Feature(int64_list=tf.train.Int64List(value=[i])),
               "label": tf.train.Feature(float_list=tf.train.FloatList(value=[float(i % 2)]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def stream_config() -> KafkaStreamConfig:
    idle = float(os.environ.get("STREAM_IDLE_S", "0"))
    return KafkaStreamConfig(bootstrap_servers=os.environ["STREAM_BROKERS"], topics=[os.environ["STREAM_TOPIC"]],
                             group_id=os.environ["STREAM_GROUP"], api_version=API, idle_timeout_s=idle or None,
                             max_batch_wait_s=0.3, poll_timeout_ms=100,
                             # members of a killed run leave the group within seconds, not minutes
                             consumer_options={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000,
                                               "max_poll_interval_ms": 60000})


class CountingModel(MonolithModel):
    def __init__(self, params=None):
        super().__init__(params)
        self.p.train.per_replica_batch_size = int(os.environ.get("STREAM_BATCH", "16"))
        self.clip_norm = 1e9

    def input_fn(self, mode):
        return kafka_dataset(stream_config(), batch_size=self.batch_size,
                             features={"id": tf.io.RaggedFeature(tf.int64),
                                       "label": tf.io.FixedLenFeature([], tf.float32, default_value=0.0)})

    def model_fn(self, features, mode):
        self.create_embedding_feature_column("id")
        rows = self.lookup_embedding_slice(["id"], "count", slice_dim=1, initializer=ZerosInitializer(),
                                           optimizer=SgdOptimizer(1.0))
        pred = tf.reshape(rows, [-1])
        return EstimatorSpec(label=features["label"], pred=pred, head_name="count", loss=-tf.reduce_sum(rows),
                             classification=False)
