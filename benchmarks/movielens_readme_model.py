"""The MovieLens model as a user writes it from the README's example alone (`ClickModel` in README.md).

Same data, features, embedding size, MLP, initializers' ranges and Adagrad settings as the demo
(`worker.models.movielens.MovieRankingModel`), but none of the demo's input tricks: the input is
`from_tensor_slices` over ragged columns, shuffled, repeated, batched and prefetched, as the README
does; the model is the README's `model_fn` with the demo's widths. The benchmarks time it next to the
demo to show that a speedup holds for models written the way the documentation says.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from worker.model import AdagradOptimizer, EstimatorSpec, ModeKeys, MonolithModel, RandomUniformInitializer
from worker.models.movielens_data import FEATURES, SINGLE_FEATURES, MovieLens, load_movielens


def examples(part: MovieLens) -> dict:
    """{feature: ragged int64 ids, "label": float32}, one row per rating (genres: several ids per row)."""
    ragged = lambda ids, lens: tf.RaggedTensor.from_row_lengths(ids.astype(np.int64), lens)  # noqa: E731
    ones = np.ones(part.size, np.int64)
    out = {name: ragged(part.columns[name], ones) for name in SINGLE_FEATURES}
    out["genres"] = ragged(part.genre_values, np.diff(part.genre_splits))
    out["label"] = part.columns["label"].astype(np.float32)
    return out


class ReadmeMovieModel(MonolithModel):
    def __init__(self, params=None, batch_size: int = 256):
        super().__init__(params)
        self.p.train.per_replica_batch_size = batch_size
        self.p.eval.per_replica_batch_size = batch_size
        self._data: tuple[MovieLens, MovieLens] | None = None

    def input_fn(self, mode):
        if self._data is None:
            self._data = load_movielens().split(0.8)
        part = self._data[0] if mode == ModeKeys.TRAIN else self._data[1]
        ds = tf.data.Dataset.from_tensor_slices(examples(part))
        if mode == ModeKeys.TRAIN:
            ds = ds.shuffle(part.size, seed=0).repeat()
        return ds.batch(self.batch_size).prefetch(tf.data.AUTOTUNE)

    def model_fn(self, features, mode):
        for name in FEATURES:  # one PS table per feature; a movie's genres are averaged
            self.create_embedding_feature_column(name, combiner="reduce_mean" if name == "genres" else None)
        x = self.lookup_embedding_slice(features=list(FEATURES), slice_name="vec", slice_dim=16,
                                        initializer=RandomUniformInitializer(-0.05, 0.05),
                                        optimizer=AdagradOptimizer(learning_rate=0.1, initial_accumulator_value=0.1),
                                        out_type="concat")
        x = tf.keras.layers.Dense(64, activation="relu")(x)
        x = tf.keras.layers.Dense(32, activation="relu")(x)
        logits = tf.reshape(tf.keras.layers.Dense(1)(x), [-1])
        pred = tf.sigmoid(logits)
        if mode == ModeKeys.PREDICT:
            return EstimatorSpec(pred=pred, head_name="ctr")
        label = features["label"]
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=logits))
        return EstimatorSpec(label=label, pred=pred, head_name="ctr", loss=loss,
                             optimizer=tf.keras.optimizers.Adagrad(0.1, initial_accumulator_value=0.1))
