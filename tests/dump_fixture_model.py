"""The small model of the checked-in dump `tests/data/model_dump_v1/` (not collected by pytest).

It uses most of what a dump records: a shared table, ReduceSum / ReduceMean / FirstN, admission and expiry,
a constant learning rate, a dense feature, an extra output and loss, a serving receiver. The dump is a
fixture of the format: regenerate it only on purpose (a format change), with

    .venv/bin/python -m tests.dump_fixture_model tests/data/model_dump_v1
"""
from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf

from worker.modeling.estimator_spec import EstimatorSpec, ModeKeys
from worker.modeling.native_model import MonolithModel
from worker.modeling.segment_configs import AdagradOptimizer, FtrlOptimizer, RandomUniformInitializer, ZerosInitializer

SPARSE = ("user", "item", "tags", "history")
EXAMPLES = 16


def examples(seed: int = 3) -> list[bytes]:
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(EXAMPLES):
        ids = {f: rng.randint(0, 9, size=rng.randint(1, 4)).tolist() for f in SPARSE}
        price = float(rng.rand())
        label = float(ids["user"][0] % 2 == ids["item"][0] % 2)
        feature = {f: tf.train.Feature(int64_list=tf.train.Int64List(value=v)) for f, v in ids.items()}
        feature["price"] = tf.train.Feature(float_list=tf.train.FloatList(value=[price]))
        feature["label"] = tf.train.Feature(float_list=tf.train.FloatList(value=[label]))
        out.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return out


def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    spec = {f: tf.io.VarLenFeature(tf.int64) for f in SPARSE}
    spec["price"] = tf.io.FixedLenFeature([1], tf.float32)
    spec["label"] = tf.io.FixedLenFeature([], tf.float32, default_value=0.0)
    parsed = tf.io.parse_example(serialized, spec)
    return {k: tf.RaggedTensor.from_sparse(v) if isinstance(v, tf.SparseTensor) else v for k, v in parsed.items()}


class DumpFixtureModel(MonolithModel):
    def __init__(self, params=None) -> None:
        super().__init__(params)
        self.batch_size = 8
        self.clip_norm = 50.0
        self.hidden = 4

    def input_fn(self, mode):
        ds = tf.data.Dataset.from_tensor_slices(examples()).batch(self.batch_size).map(parse)
        return ds.repeat() if mode == ModeKeys.TRAIN else ds

    def serving_input_receiver_fn(self):
        return {"examples": tf.TensorSpec([None], tf.string)}, lambda inputs: parse(inputs["examples"])

    def model_fn(self, features, mode):
        self.create_embedding_feature_column("user")
        self.create_embedding_feature_column("item", expire_time=30)
        self.create_embedding_feature_column("tags", occurrence_threshold=1, combiner="reduce_mean")
        self.create_embedding_feature_column("history", shared_name="item", expire_time=30, combiner="first_n",
                                             max_seq_length=2)
        vec = self.lookup_embedding_slice(features=["user", "item", "tags"], slice_name="vec", slice_dim=4,
                                          initializer=RandomUniformInitializer(-0.1, 0.1),
                                          optimizer=AdagradOptimizer(0.2, 0.1), out_type="concat")
        bias = self.lookup_embedding_slice(features=["user"], slice_name="bias", slice_dim=1,
                                           initializer=ZerosInitializer(), optimizer=FtrlOptimizer(0.1),
                                           learning_rate_fn=0.05, out_type="add_n")
        (history,) = self.lookup_embedding_slice(features=["history"], slice_name="vec", slice_dim=4)
        x = tf.concat([vec, tf.reshape(history, [-1, 8]), features["price"]], axis=1)
        x = tf.keras.layers.Dense(self.hidden, activation="tanh",
                                  kernel_initializer=tf.keras.initializers.GlorotUniform(5))(x)
        logits = tf.reshape(tf.keras.layers.Dense(1, kernel_initializer=tf.keras.initializers.GlorotUniform(6))(x)
                            + bias, [-1])
        self.add_extra_output("logit", logits)
        pred = tf.sigmoid(logits)
        if mode == ModeKeys.PREDICT:
            return EstimatorSpec(pred=pred, head_name="click")
        self.add_loss(1e-3 * tf.reduce_sum(tf.square(vec)))
        label = features["label"]
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=logits))
        return EstimatorSpec(label=label, pred=pred, head_name="click", loss=loss,
                             optimizer=tf.keras.optimizers.Adagrad(0.1))


if __name__ == "__main__":
    from worker.model_dump.builder import dump_model

    dump_model(DumpFixtureModel(), sys.argv[1], model_class="tests.dump_fixture_model:DumpFixtureModel")
