"""Embedding tables inside a SavedModel, in core TensorFlow only: id -> row number -> row.

Each table is a `DenseHashTable` (int64 id -> row number) plus a row matrix variable (float32, or
float16 to halve the size) and the ids in row order. An id the table does not hold reads as zeros, as
in training. `hashtable_assign` upserts rows (the seed's table-assign signature; the matrix grows for
new ids), and the PS sub-models' `lookup` / `raw_lookup` signatures answer lookups for their shard.
"""
from __future__ import annotations

import re

import numpy as np
import tensorflow as tf

EMPTY_KEY = np.iinfo(np.int64).min
DELETED_KEY = EMPTY_KEY + 1


def signature_key(table: str) -> str:
    """A table name as a signature input/output key (letters, digits and '_')."""
    return re.sub(r"[^A-Za-z0-9_]", "_", table)


def check_keys(tables) -> None:
    keys = [signature_key(t) for t in tables]
    if len(set(keys)) != len(keys):
        raise ValueError(f"table names {sorted(tables)} collide once made signature keys ({sorted(keys)})")


class ServingTable(tf.Module):
    def __init__(self, name: str, ids: np.ndarray, values: np.ndarray, float16: bool = False) -> None:
        super().__init__(name=signature_key(name))
        ids = np.ascontiguousarray(ids, np.int64)
        if ids.ndim != 1 or values.ndim != 2 or values.shape[0] != ids.size:
            raise ValueError(f"table {name!r}: {ids.shape} ids for values of shape {values.shape}")
        if np.isin(ids, [EMPTY_KEY, DELETED_KEY]).any():
            raise ValueError(f"table {name!r} holds id {EMPTY_KEY} or {DELETED_KEY}, reserved as the hash table's "
                             "empty/deleted markers")
        if len(np.unique(ids)) != ids.size:
            raise ValueError(f"table {name!r}: repeated ids")
        self.table_name = name
        self.dim = int(values.shape[1])
        self.dtype = tf.float16 if float16 else tf.float32
        self.ids = tf.Variable(ids, shape=[None], name="ids")
        self.rows = tf.Variable(values.astype(np.float16 if float16 else np.float32), shape=[None, self.dim],
                                name="rows")
        self.index = tf.lookup.experimental.DenseHashTable(
            tf.int64, tf.int64, default_value=-1, empty_key=EMPTY_KEY, deleted_key=DELETED_KEY,
            initial_num_buckets=max(16, 1 << int(2 * max(ids.size, 1) - 1).bit_length()))
        if ids.size:
            self.index.insert(ids, np.arange(ids.size, dtype=np.int64))

    def lookup(self, ids: tf.Tensor) -> tf.Tensor:
        """float32 rows for int64 ids ([n] -> [n, dim]); absent ids give zero rows."""
        ids = tf.reshape(ids, [-1])
        idx = tf.reshape(self.index.lookup(ids), [-1])
        rows = tf.cast(tf.gather(self.rows, tf.maximum(idx, 0)), tf.float32)
        rows = tf.where((idx >= 0)[:, None], rows, tf.zeros_like(rows))
        return tf.ensure_shape(rows, [None, self.dim])

    def assign(self, ids: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
        """Upsert rows (the last value of a repeated id wins); returns the number of ids received."""
        ids = tf.reshape(ids, [-1])
        values = tf.ensure_shape(tf.cast(values, self.dtype), [None, self.dim])
        tf.debugging.assert_equal(tf.shape(values)[0], tf.size(ids),
                                  message=f"table {self.table_name}: one value row per id")
        uniq, pos = tf.unique(ids, out_idx=tf.int64)
        last = tf.math.unsorted_segment_max(tf.range(tf.size(ids, out_type=tf.int64)), pos, tf.size(uniq))
        values = tf.gather(values, last)
        idx = tf.reshape(self.index.lookup(uniq), [-1])
        known = idx >= 0
        self.rows.scatter_nd_update(tf.boolean_mask(idx, known)[:, None], tf.boolean_mask(values, known))
        new_ids = tf.boolean_mask(uniq, ~known)
        start = tf.shape(self.rows, out_type=tf.int64)[0]
        self.index.insert(new_ids, start + tf.range(tf.size(new_ids, out_type=tf.int64)))
        self.rows.assign(tf.concat([self.rows, tf.boolean_mask(values, ~known)], axis=0))
        self.ids.assign(tf.concat([self.ids, new_ids], axis=0))
        return tf.size(ids, out_type=tf.int64)


class ServingTables(tf.Module):
    """The exported tables of one SavedModel (the whole model, or one serving shard)."""

    def __init__(self, tables: dict[str, ServingTable]) -> None:
        super().__init__(name="tables")
        check_keys(tables)
        self.by_name = dict(sorted(tables.items()))

    def lookup_function(self):
        names = list(self.by_name)
        spec = {signature_key(t): tf.TensorSpec([None], tf.int64, name=signature_key(t)) for t in names}

        def lookup(inputs):
            return {signature_key(t): self.by_name[t].lookup(inputs[signature_key(t)]) for t in names}

        return tf.function(lookup, input_signature=[spec], autograph=False)

    def raw_lookup_function(self):
        """`id` grouped by table in name order (`id_split`: num_tables + 1 offsets) -> `flat_emb`, every row
        flattened and concatenated in the same order."""
        tables = list(self.by_name.values())

        def raw_lookup(inputs):
            ids, split = inputs["id"], inputs["id_split"]
            tf.debugging.assert_equal(tf.size(split), len(tables) + 1,
                                      message=f"id_split must have {len(tables) + 1} offsets")
            parts = [tf.reshape(t.lookup(ids[split[i]:split[i + 1]]), [-1]) for i, t in enumerate(tables)]
            return {"flat_emb": tf.concat(parts, axis=0) if parts else tf.zeros([0], tf.float32)}

        spec = {"id": tf.TensorSpec([None], tf.int64, name="id"),
                "id_split": tf.TensorSpec([None], tf.int64, name="id_split")}
        return tf.function(raw_lookup, input_signature=[spec], autograph=False)

    def assign_function(self):
        spec = {}
        for t, table in self.by_name.items():
            key = signature_key(t)
            spec[f"{key}_id"] = tf.TensorSpec([None], tf.int64, name=f"{key}_id")
            spec[f"{key}_value"] = tf.TensorSpec([None, table.dim], tf.float32, name=f"{key}_value")

        def hashtable_assign(inputs):
            return {f"{signature_key(t)}_result": table.assign(inputs[f"{signature_key(t)}_id"],
                                                               inputs[f"{signature_key(t)}_value"])
                    for t, table in self.by_name.items()}

        return tf.function(hashtable_assign, input_signature=[spec], autograph=False)
