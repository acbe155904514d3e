"""The MovieLens-100K ranking demo model: will a user rate a movie >= 4?

Seven id features (uid, item, age, gender, occupation, zip, multi-valued genres) -> one 16-dim
embedding slice each (PS tables, Adagrad) -> MLP -> sigmoid. Train on the oldest 80% of ratings,
evaluate AUC on the newest 20%.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from worker.modeling.estimator_spec import EstimatorSpec, ModeKeys
from worker.modeling.heads import get_sigmoid_loss_and_pred
from worker.modeling.native_model import MonolithModel
from worker.modeling.segment_configs import AdagradOptimizer, RandomUniformInitializer
from worker.models.movielens_data import FEATURES, SINGLE_FEATURES, MovieLens, load_movielens

HIDDEN = (64, 32)


def make_dataset(part: MovieLens, batch_size: int, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Batches of {feature: ragged int64 ids, "label": float}; reshuffled every epoch when seeded, endless then."""
    cols = {k: tf.constant(part.columns[k]) for k in SINGLE_FEATURES}
    genres = tf.RaggedTensor.from_row_splits(tf.constant(part.genre_values), tf.constant(part.genre_splits))
    label = tf.constant(part.columns["label"])

    def gather(idx):
        out = {k: tf.RaggedTensor.from_tensor(tf.gather(cols[k], idx)[:, None]) for k in SINGLE_FEATURES}
        out["genres"] = tf.gather(genres, idx)
        out["label"] = tf.gather(label, idx)
        return out

    ds = tf.data.Dataset.range(part.size)
    if shuffle_seed is not None:
        ds = ds.shuffle(part.size, seed=shuffle_seed, reshuffle_each_iteration=True).repeat()
    return ds.batch(batch_size).map(gather, num_parallel_calls=2, deterministic=True).prefetch(4)


def monolith_examples(part: MovieLens, start: int, end: int) -> list[bytes]:
    """Ratings start..end-1 as serialized Monolith `Example`s (each feature's ids in a fid_v2 list, the
    label in `label`): what a client sends the served model."""
    from protos import example_pb2

    out = []
    for i in range(start, end):
        ex = example_pb2.Example(label=[float(part.columns["label"][i])])
        for name in SINGLE_FEATURES:
            ex.named_feature.add(name=name).feature.fid_v2_list.value.append(int(part.columns[name][i]))
        genres = part.genre_values[part.genre_splits[i]:part.genre_splits[i + 1]]
        ex.named_feature.add(name="genres").feature.fid_v2_list.value.extend(int(g) for g in genres)
        out.append(ex.SerializeToString())
    return out


class MovieRankingModel(MonolithModel):
    def __init__(self, params=None, data_dir: str | None = None, embedding_dim: int = 16, learning_rate: float = 0.1,
                 batch_size: int = 256, seed: int = 0) -> None:
        super().__init__(params)
        self.data_dir, self.embedding_dim, self.learning_rate, self.seed = data_dir, embedding_dim, learning_rate, seed
        self.batch_size = batch_size
        self._data: tuple[MovieLens, MovieLens] | None = None

    def data(self) -> tuple[MovieLens, MovieLens]:
        if self._data is None:
            self._data = load_movielens(self.data_dir).split(0.8)
        return self._data

    def input_fn(self, mode):
        train, test = self.data()
        if mode == ModeKeys.TRAIN:
            return make_dataset(train, self.batch_size, shuffle_seed=self.seed)
        return make_dataset(test, self.batch_size)

    def serving_input_receiver_fn(self):
        """Served from serialized Monolith `Example`s, parsed in the graph with core TF ops."""
        from worker.modeling.monolith_inputs import parse_examples

        return ({"examples": tf.TensorSpec([None], tf.string)},
                lambda inputs: parse_examples(inputs["examples"], FEATURES, with_label=True))

    def model_fn(self, features, mode):
        for name in FEATURES:
            self.create_embedding_feature_column(name, combiner="reduce_mean" if name == "genres" else None)
        embeddings = self.lookup_embedding_slice(
            features=list(FEATURES), slice_name="vec", slice_dim=self.embedding_dim,
            initializer=RandomUniformInitializer(-0.05, 0.05),
            optimizer=AdagradOptimizer(learning_rate=self.learning_rate, initial_accumulator_value=0.1),
            out_type="concat")
        x = embeddings
        for i, width in enumerate(HIDDEN):
            x = tf.keras.layers.Dense(width, activation="relu",
                                      kernel_initializer=tf.keras.initializers.GlorotUniform(self.seed + i))(x)
        logits = tf.keras.layers.Dense(1, kernel_initializer=tf.keras.initializers.GlorotUniform(self.seed + 9))(x)
        label = features["label"]
        loss, pred = get_sigmoid_loss_and_pred("ctr", logits, label, mode=mode)
        if mode == ModeKeys.PREDICT:
            return EstimatorSpec(pred=pred, head_name="ctr")
        loss = loss / tf.cast(tf.shape(label)[0], tf.float32)
        return EstimatorSpec(label=label, pred=pred, head_name="ctr", loss=loss, classification=True,
                             optimizer=tf.keras.optimizers.Adagrad(self.learning_rate, initial_accumulator_value=0.1))


def steps_per_epoch(model: MovieRankingModel) -> int:
    train, _ = model.data()
    return int(np.ceil(train.size / model.batch_size))
