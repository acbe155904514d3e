"""The plain-Keras peer of `MovieRankingModel`: `tf.keras.layers.Embedding` tables in the worker process.

Same features, vocabularies, embedding size, initialiser range, MLP, loss and Adagrad settings; the only
difference is where embeddings live (a Keras variable vs our store / PS tables).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import tensorflow as tf

from worker.models.movielens import HIDDEN, make_dataset
from worker.models.movielens_data import FEATURES, SINGLE_FEATURES, MovieLens
from worker.runtime.evaluation import auc


class KerasMovieRanking:
    def __init__(self, vocab_sizes: dict[str, int], embedding_dim: int = 16, learning_rate: float = 0.1,
                 seed: int = 0) -> None:
        init = tf.keras.initializers.RandomUniform(-0.05, 0.05, seed=seed)
        self.embeddings = {f: tf.keras.layers.Embedding(vocab_sizes[f], embedding_dim, embeddings_initializer=init)
                           for f in FEATURES}
        self.layers = [tf.keras.layers.Dense(w, activation="relu",
                                             kernel_initializer=tf.keras.initializers.GlorotUniform(seed + i))
                       for i, w in enumerate(HIDDEN)]
        self.layers.append(tf.keras.layers.Dense(1, kernel_initializer=tf.keras.initializers.GlorotUniform(seed + 9)))
        self.optimizer = tf.keras.optimizers.Adagrad(learning_rate, initial_accumulator_value=0.1)
        self._train: Any = None
        self._eval: Any = None

    def _logits(self, features):
        parts = []
        for f in FEATURES:
            ids = features[f]
            per_id = self.embeddings[f](ids.values)
            rows = ids.value_rowids()
            n = tf.shape(ids.row_splits)[0] - 1
            if f in SINGLE_FEATURES:
                parts.append(tf.math.unsorted_segment_sum(per_id, rows, n))
            else:
                counts = tf.cast(ids.row_lengths(), tf.float32)[:, None]
                parts.append(tf.math.divide_no_nan(tf.math.unsorted_segment_sum(per_id, rows, n), counts))
        x = tf.concat(parts, axis=1)
        for layer in self.layers:
            x = layer(x)
        return tf.reshape(x, [-1])

    def _build(self, spec) -> None:
        sig = [{k: (tf.RaggedTensorSpec([None, None], v.dtype, 1, v.row_splits_dtype)
                    if isinstance(v, tf.RaggedTensorSpec) else tf.TensorSpec([None], v.dtype))
                for k, v in spec.items()}]

        @tf.function(input_signature=sig)
        def train_step(features):
            with tf.GradientTape() as tape:
                logits = self._logits(features)
                loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=features["label"],
                                                                              logits=logits))
            variables = [v for e in self.embeddings.values() for v in e.trainable_variables] + \
                [v for layer in self.layers for v in layer.trainable_variables]
            grads = tape.gradient(loss, variables)
            self.optimizer.apply_gradients(zip(grads, variables))
            return loss

        @tf.function(input_signature=sig)
        def predict(features):
            return tf.sigmoid(self._logits(features))

        self._train, self._eval = train_step, predict

    def fit(self, train: MovieLens, batch_size: int, steps: int, seed: int = 0, warmup_steps: int = 0) -> dict:
        ds = make_dataset(train, batch_size, shuffle_seed=seed)
        if self._train is None:
            self._build(ds.element_spec)
            for f in FEATURES:
                self.embeddings[f].build((None,))
            for layer, width in zip(self.layers, (len(FEATURES) * self.embeddings["uid"].output_dim, *HIDDEN)):
                layer.build((None, width))
        it = iter(ds)
        for _ in range(warmup_steps):
            self._train(next(it))
        started = time.perf_counter()
        for _ in range(steps - warmup_steps):
            loss = self._train(next(it))
        elapsed = time.perf_counter() - started
        done = steps - warmup_steps
        return {"steps": steps, "loss": float(loss) if done else float("nan"),
                "examples_per_sec": done * batch_size / elapsed if done else 0.0}

    def evaluate(self, test: MovieLens, batch_size: int) -> float:
        preds, labels = [], []
        for batch in make_dataset(test, batch_size):
            preds.append(self._eval(batch).numpy())
            labels.append(batch["label"].numpy())
        return auc(np.concatenate(labels), np.concatenate(preds))
