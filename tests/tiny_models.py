"""Small deterministic models for worker tests (not collected by pytest)."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from worker.modeling.estimator_spec import EstimatorSpec, ModeKeys
from worker.modeling.native_model import MonolithModel
from worker.modeling.segment_configs import SgdOptimizer, ZerosInitializer

FEATURES = ("f0", "f1", "f2")
VOCAB, DIM, BATCH, NUM_BATCHES = 40, 4, 32, 30


def make_batches(seed: int = 7) -> list[dict[str, np.ndarray | list]]:
    rng = np.random.RandomState(seed)
    batches = []
    for _ in range(NUM_BATCHES):
        b: dict = {}
        score = np.zeros(BATCH)
        for i, f in enumerate(FEATURES):
            rows = [rng.randint(0, VOCAB, size=rng.randint(1, 5)).tolist() for _ in range(BATCH)]
            b[f] = rows
            score += np.array([np.mean(r) for r in rows]) * (1 if i % 2 == 0 else -1)
        b["label"] = (score + rng.randn(BATCH) * 3 > 0).astype(np.float32)
        batches.append(b)
    return batches


def batch_tensors(b: dict) -> dict:
    out = {f: tf.ragged.constant(b[f], dtype=tf.int64) for f in FEATURES}
    out["label"] = tf.constant(b["label"])
    return out


def dense_layers():
    return (tf.keras.layers.Dense(8, activation="tanh", kernel_initializer=tf.keras.initializers.GlorotUniform(1)),
            tf.keras.layers.Dense(1, kernel_initializer=tf.keras.initializers.GlorotUniform(2)))


class TinyDNN(MonolithModel):
    """Three ragged features -> zero-initialised embeddings (optimizer given) -> MLP -> sigmoid loss."""

    def __init__(self, emb_optimizer=None, dense_lr: float = 0.05, repeat: bool = True, shuffle_files: bool = False,
                 dense_optimizer=None):
        super().__init__()
        self.emb_optimizer = emb_optimizer or SgdOptimizer(0.3)
        self.dense_lr = dense_lr
        self.dense_optimizer = dense_optimizer  # a factory of the Keras optimizer (default SGD(dense_lr))
        self.repeat = repeat
        self.batch_size = BATCH

    def input_fn(self, mode):
        batches = make_batches()
        ds = tf.data.Dataset.from_tensor_slices(batch_tensors({
            k: [row for b in batches for row in b[k]] if k != "label" else np.concatenate([b["label"] for b in batches])
            for k in (*FEATURES, "label")}))
        ds = ds.batch(BATCH)
        return ds.repeat() if mode == ModeKeys.TRAIN and self.repeat else ds

    def model_fn(self, features, mode):
        for f in FEATURES:
            self.create_embedding_feature_column(f)
        x = self.lookup_embedding_slice(list(FEATURES), "vec", slice_dim=DIM, initializer=ZerosInitializer(),
                                        optimizer=self.emb_optimizer, out_type="concat")
        l1, l2 = dense_layers()
        logits = tf.reshape(l2(l1(x)), [-1])
        pred = tf.sigmoid(logits)
        if mode == ModeKeys.PREDICT:
            return EstimatorSpec(pred=pred, head_name="ctr")
        loss = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=features["label"], logits=logits))
        optimizer = self.dense_optimizer() if self.dense_optimizer else tf.keras.optimizers.SGD(self.dense_lr)
        return EstimatorSpec(label=features["label"], pred=pred, head_name="ctr", loss=loss, optimizer=optimizer)


class TwoHeadModel(TinyDNN):
    """A classification head and a regression head over the same embeddings; table "f0" filters rare ids."""

    def model_fn(self, features, mode):
        self.create_embedding_feature_column("f0", occurrence_threshold=2)
        for f in FEATURES[1:]:
            self.create_embedding_feature_column(f)
        x = self.lookup_embedding_slice(list(FEATURES), "vec", slice_dim=DIM, optimizer=self.emb_optimizer,
                                        out_type="concat")
        hidden = tf.keras.layers.Dense(8, activation="tanh")(x)
        logits = tf.reshape(tf.keras.layers.Dense(1)(hidden), [-1])
        score = tf.reshape(tf.keras.layers.Dense(1)(hidden), [-1])
        preds = {"ctr": tf.sigmoid(logits), "score": score}
        if mode == ModeKeys.PREDICT:
            return EstimatorSpec(pred=preds)
        label = features["label"]
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=logits)) + \
            tf.reduce_mean(tf.square(score - label))
        return EstimatorSpec(label={"ctr": label, "score": label}, pred=preds, loss=loss, classification=[True, False],
                             optimizer=tf.keras.optimizers.Adagrad(0.1))


def monolith_examples(b: dict, features=FEATURES) -> list[bytes]:
    """The rows of a batch dict as serialized Monolith `Example`s (ids in fid_v2 lists, the label)."""
    from protos import example_pb2

    out = []
    for i in range(len(b["label"])):
        ex = example_pb2.Example(label=[float(b["label"][i])])
        for f in features:
            ex.named_feature.add(name=f).feature.fid_v2_list.value.extend(int(v) for v in b[f][i])
        out.append(ex.SerializeToString())
    return out


class ServingDNN(TinyDNN):
    """Two heads over TinyDNN's features (f2 read through f1's table) and an extra output, served from
    Monolith `Example`s."""

    def model_fn(self, features, mode):
        from worker.model import RandomUniformInitializer

        self.create_embedding_feature_column("f0")
        self.create_embedding_feature_column("f1")
        self.create_embedding_feature_column("f2", shared_name="f1")
        x = self.lookup_embedding_slice(list(FEATURES), "vec", slice_dim=DIM,
                                        initializer=RandomUniformInitializer(-0.1, 0.1),
                                        optimizer=self.emb_optimizer, out_type="concat")
        hidden = tf.keras.layers.Dense(8, activation="tanh",
                                       kernel_initializer=tf.keras.initializers.GlorotUniform(1))(x)
        logits = tf.reshape(tf.keras.layers.Dense(1, kernel_initializer=tf.keras.initializers.GlorotUniform(2))(hidden),
                            [-1])
        score = tf.reshape(tf.keras.layers.Dense(1, kernel_initializer=tf.keras.initializers.GlorotUniform(3))(hidden),
                           [-1])
        preds = {"ctr": tf.sigmoid(logits), "score": score}
        self.add_extra_output("hidden", hidden)
        if mode == ModeKeys.PREDICT:
            return EstimatorSpec(pred=preds)
        label = features["label"]
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=logits)) + \
            tf.reduce_mean(tf.square(score - label))
        return EstimatorSpec(label={"ctr": label, "score": label}, pred=preds, loss=loss, classification=[True, False],
                             optimizer=tf.keras.optimizers.Adagrad(0.1))

    def serving_input_receiver_fn(self):
        from worker.modeling.monolith_inputs import parse_examples

        return ({"examples": tf.TensorSpec([None], tf.string)},
                lambda inputs: parse_examples(inputs["examples"], FEATURES, with_label=True))
