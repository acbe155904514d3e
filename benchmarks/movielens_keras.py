"""The plain-Keras peer of the MovieLens models: `keras.layers.Embedding` tables in the worker process,
trained with Keras 3's own `model.fit` (which compiles its step with XLA when every layer allows it).

Same features, vocabularies, embedding size, initialiser range, MLP, loss and Adagrad settings; the only
difference is where embeddings live (a Keras variable vs our store / PS tables). `input_fn` is the
dataset of the model being compared (features with the label inside), so both read the same batches.
"""
from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from worker.models.movielens import HIDDEN
from worker.models.movielens_data import FEATURES, SINGLE_FEATURES
from worker.runtime.evaluation import auc


class KerasMovieRanking(tf.keras.Model):
    def __init__(self, vocab_sizes: dict[str, int], embedding_dim: int = 16, learning_rate: float = 0.1,
                 seed: int = 0) -> None:
        super().__init__()
        init = tf.keras.initializers.RandomUniform(-0.05, 0.05, seed=seed)
        self.embeddings = {f: tf.keras.layers.Embedding(vocab_sizes[f], embedding_dim, embeddings_initializer=init,
                                                        name=f"emb_{f}") for f in FEATURES}
        self.mlp = [tf.keras.layers.Dense(w, activation="relu", kernel_initializer=tf.keras.initializers.GlorotUniform(
            seed + i)) for i, w in enumerate(HIDDEN)]
        self.mlp.append(tf.keras.layers.Dense(1, kernel_initializer=tf.keras.initializers.GlorotUniform(seed + 9)))
        self.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate, initial_accumulator_value=0.1),
                     loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))

    def call(self, features):
        parts = []
        for f in FEATURES:
            ids = features[f]
            per_id = self.embeddings[f](ids.values)
            rows, n = ids.value_rowids(), tf.shape(ids.row_splits)[0] - 1
            pooled = tf.math.unsorted_segment_sum(per_id, rows, n)
            if f not in SINGLE_FEATURES:
                pooled = tf.math.divide_no_nan(pooled, tf.cast(ids.row_lengths(), tf.float32)[:, None])
            parts.append(pooled)
        x = tf.concat(parts, axis=1)
        for layer in self.mlp:
            x = layer(x)
        return tf.reshape(x, [-1])


class _StepClock(tf.keras.callbacks.Callback):
    """The time at the end of every batch: the rate is taken after the first (tracing) step."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.ends.append(time.perf_counter())


def with_label(ds: tf.data.Dataset) -> tf.data.Dataset:
    """(features, label) pairs for `fit` from the models' feature dicts holding the label."""
    return ds.map(lambda f: ({k: v for k, v in f.items() if k != "label"}, f["label"]))


def fit(model: KerasMovieRanking, ds: tf.data.Dataset, batch_size: int, steps: int) -> dict:
    """`model.fit` for `steps` batches of `ds`; examples/s and ms/step after the first step."""
    clock = _StepClock()
    model.fit(with_label(ds), epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[clock])
    timed = len(clock.ends) - 1
    elapsed = clock.ends[-1] - clock.ends[0] if timed else float("nan")
    return {"steps": steps, "examples_per_sec": timed * batch_size / elapsed if timed else 0.0,
            "ms_per_step": 1000.0 * elapsed / timed if timed else float("nan")}


def evaluate(model: KerasMovieRanking, ds: tf.data.Dataset) -> float:
    preds, labels = [], []
    for features, label in with_label(ds):
        preds.append(tf.sigmoid(model(features)).numpy())
        labels.append(label.numpy())
    return auc(np.concatenate(labels), np.concatenate(preds))
