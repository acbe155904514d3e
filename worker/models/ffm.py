"""Monolith's small FFM test model: 6 slots of vocabulary 5, 64 deterministic examples.

Slot i's table holds a 1-dim FTRL bias (read for the first half of the slots) and, for each FFM pair
(user slot, item slot, dim), the user slot's SGD vector "for" the item field and vice versa.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from worker.modeling.estimator_spec import EstimatorSpec, ModeKeys
from worker.modeling.kafka_input import KafkaStreamConfig, kafka_dataset
from worker.modeling.native_model import MonolithModel
from worker.modeling.segment_configs import FtrlOptimizer, RandomUniformInitializer, SgdOptimizer, ZerosInitializer

NUM_SLOTS = 6
VOCAB_SIZES = [5] * NUM_SLOTS
NUM_EXAMPLES = 64
FFM_SLOT = [(0, 3, 4), (1, 4, 4), (2, 5, 4)]   # (user slot, item slot, embedding dim)


def generate_ffm_examples(vocab_sizes=VOCAB_SIZES, num_examples=NUM_EXAMPLES, seed=0) -> dict[str, list]:
    """Deterministic examples: 1-2 ids per slot; the label is a fixed rule of slots 0 and 3."""
    rng = np.random.RandomState(seed)
    data: dict[str, list] = {f"slot_{i}": [] for i in range(len(vocab_sizes))}
    labels = []
    for _ in range(num_examples):
        for i, vocab in enumerate(vocab_sizes):
            data[f"slot_{i}"].append(rng.randint(0, vocab, size=rng.randint(1, 3)).tolist())
        labels.append(float(data["slot_0"][-1][0] + data["slot_3"][-1][0] >= 4))
    data["label"] = labels
    return data


def make_examples(data: dict[str, list]) -> list[bytes]:
    """Serialized `tf.train.Example`s: an int64 list per slot and a float label."""
    out = []
    for i, label in enumerate(data["label"]):
        feature = {k: tf.train.Feature(int64_list=tf.train.Int64List(value=v[i])) for k, v in data.items()
                   if k != "label"}
        feature["label"] = tf.train.Feature(float_list=tf.train.FloatList(value=[label]))
        out.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return out


def parse_examples(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """A batch of serialized examples -> ragged int64 slots (VarLen -> Ragged) and the label."""
    spec = {f"slot_{i}": tf.io.VarLenFeature(tf.int64) for i in range(NUM_SLOTS)}
    spec["label"] = tf.io.FixedLenFeature([], tf.float32, default_value=0.0)
    parsed = tf.io.parse_example(serialized, spec)
    return {k: tf.RaggedTensor.from_sparse(v) if isinstance(v, tf.SparseTensor) else v for k, v in parsed.items()}


class TestFFMModel(MonolithModel):
    __test__ = False  # not a pytest class

    def __init__(self, params=None) -> None:
        super().__init__(params)
        self.p.train.per_replica_batch_size = NUM_EXAMPLES
        self.p.eval.per_replica_batch_size = NUM_EXAMPLES

    def input_fn(self, mode):
        serialized = make_examples(generate_ffm_examples())
        ds = tf.data.Dataset.from_tensor_slices(serialized).batch(self.batch_size).map(parse_examples).cache()
        if mode == ModeKeys.TRAIN:
            ds = ds.repeat()
        return ds.prefetch(2)

    def serving_input_receiver_fn(self):
        """What a serving signature feeds: a batch of serialized examples, and how to parse it."""
        return {"instances": tf.TensorSpec([None], tf.string)}, lambda inputs: parse_examples(inputs["instances"])

    def model_fn(self, features, mode):
        slots = [f"slot_{i}" for i in range(NUM_SLOTS)]
        for name in slots:
            self.create_embedding_feature_column(name)
        bias = self.lookup_embedding_slice(features=slots[:NUM_SLOTS // 2], slice_name="bias", slice_dim=1,
                                           initializer=ZerosInitializer(),
                                           optimizer=FtrlOptimizer(learning_rate=0.01, initial_accumulator_value=1e-6,
                                                                   beta=1.0), out_type="add_n")
        dots = []
        for user, item, dim in FFM_SLOT:
            vec = dict(initializer=RandomUniformInitializer(-0.05, 0.05), optimizer=SgdOptimizer(0.1))
            (u,) = self.lookup_embedding_slice(features=[slots[user]], slice_name=f"ffm_{item}", slice_dim=dim, **vec)
            (i,) = self.lookup_embedding_slice(features=[slots[item]], slice_name=f"ffm_{user}", slice_dim=dim, **vec)
            dots.append(tf.reduce_sum(u * i, axis=1, keepdims=True))
        logits = tf.reshape(tf.add_n(dots) + bias, [-1])
        pred = tf.sigmoid(logits)
        if mode == ModeKeys.PREDICT:
            return EstimatorSpec(pred=pred, head_name="ctr")
        label = features["label"]
        loss = tf.reduce_sum(tf.keras.losses.binary_crossentropy(label[:, None], pred[:, None]))
        return EstimatorSpec(label=label, pred=pred, head_name="ctr", loss=loss,
                             optimizer=tf.keras.optimizers.SGD(0.01), classification=True)


class StreamingFFMModel(TestFFMModel):
    """The FFM model trained from Kafka: each record is one serialized `tf.train.Example` as `make_examples`
    writes them, from the stream the environment names (`KafkaStreamConfig.from_environ`; deploy/k8s sets it).
    Evaluation and serving are the FFM model's."""

    __test__ = False

    def input_fn(self, mode):
        if mode != ModeKeys.TRAIN:
            return super().input_fn(mode)
        features = {f"slot_{i}": tf.io.RaggedFeature(tf.int64) for i in range(NUM_SLOTS)}
        features["label"] = tf.io.FixedLenFeature([], tf.float32, default_value=0.0)
        return kafka_dataset(KafkaStreamConfig.from_environ(os.environ), features=features,
                             batch_size=self.batch_size)
