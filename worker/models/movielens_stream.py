"""The MovieLens ranking model trained from a Kafka stream: the real-time training demo.

Same features, embeddings, MLP and serving input as `worker.models.movielens` (served from Monolith
`Example`s); the training records are `tf.train.Example`s read from Kafka, one rating each (`stream_records`
writes them). The stream is configured from the environment, so the same class runs in every process of a
job and in the exporter:

  MONOLITH_STREAM_BROKERS  bootstrap servers, host:port[,...] (required)
  MONOLITH_STREAM_TOPIC    topic (default "ratings")
  MONOLITH_STREAM_GROUP    consumer group (default "movielens-trainers")
  MONOLITH_STREAM_API      kafka-python `api_version`, e.g. "2.3.0" (default: probe the broker)
  MONOLITH_STREAM_BATCH    batch size (default 256)
  MONOLITH_STREAM_IDLE_S   end the input after this long without a record (default: never)
"""
from __future__ import annotations

import os

import tensorflow as tf

from worker.modeling.kafka_input import KafkaStreamConfig, kafka_dataset  # models stay above services
from worker.models.movielens import MovieRankingModel
from worker.models.movielens_data import FEATURES, SINGLE_FEATURES, MovieLens


def stream_config() -> KafkaStreamConfig:
    env = os.environ
    if not env.get("MONOLITH_STREAM_BROKERS"):
        raise ValueError("MovieLensStreamModel reads Kafka: set MONOLITH_STREAM_BROKERS=host:port[,...]")
    api = tuple(int(x) for x in env["MONOLITH_STREAM_API"].split(".")) if env.get("MONOLITH_STREAM_API") else None
    idle = float(env.get("MONOLITH_STREAM_IDLE_S", "0")) or None
    return KafkaStreamConfig(bootstrap_servers=env["MONOLITH_STREAM_BROKERS"],
                             topics=[env.get("MONOLITH_STREAM_TOPIC", "ratings")],
                             group_id=env.get("MONOLITH_STREAM_GROUP", "movielens-trainers"), api_version=api,
                             idle_timeout_s=idle, max_batch_wait_s=0.2, poll_timeout_ms=100,
                             consumer_options={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000})


def stream_record(ids: dict[str, list[int]], label: float) -> bytes:
    """One rating as the `tf.train.Example` the stream carries: every feature's ids, and the label."""
    feature = {name: tf.train.Feature(int64_list=tf.train.Int64List(value=ids.get(name, []))) for name in FEATURES}
    feature["label"] = tf.train.Feature(float_list=tf.train.FloatList(value=[label]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def stream_records(part: MovieLens, start: int, end: int) -> list[bytes]:
    """Ratings start..end-1 of `part` as stream records (the same ids as `movielens.monolith_examples`)."""
    out = []
    for i in range(start, end):
        ids = {name: [int(part.columns[name][i])] for name in SINGLE_FEATURES}
        ids["genres"] = [int(g) for g in part.genre_values[part.genre_splits[i]:part.genre_splits[i + 1]]]
        out.append(stream_record(ids, float(part.columns["label"][i])))
    return out


class MovieLensStreamModel(MovieRankingModel):
    def __init__(self, params=None, **kwargs) -> None:
        kwargs.setdefault("batch_size", int(os.environ.get("MONOLITH_STREAM_BATCH", "256")))
        super().__init__(params, **kwargs)

    def input_fn(self, mode):
        features = {name: tf.io.RaggedFeature(tf.int64) for name in FEATURES}
        features["label"] = tf.io.FixedLenFeature([], tf.float32, default_value=0.0)
        return kafka_dataset(stream_config(), features=features, batch_size=self.batch_size)
