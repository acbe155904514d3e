"""Turn a batch's ragged id features into deduplicated table lookups and per-feature row blocks.

Ids are deduplicated per feature (the step receives one row per distinct id and an index per id) and
again per table (features sharing a table send each id once). Gradients flow back the same way:
per-feature row gradients are concatenated per table and the store sums duplicates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class PreparedBatch:
    features: dict[str, Any]
    batch_size: int
    uniq: dict[str, np.ndarray] = field(default_factory=dict)    # feature -> distinct ids
    index: dict[str, np.ndarray] = field(default_factory=dict)   # feature -> int32 position per id
    table_ids: dict[str, np.ndarray] = field(default_factory=dict)
    table_inverse: dict[str, np.ndarray] = field(default_factory=dict)  # only for shared tables
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    dense: dict[str, np.ndarray] | None = None


class BatchPreparer:
    def __init__(self, sparse_features: list[str], feature_tables: dict[str, str], table_dims: dict[str, int]):
        self.sparse_features = sparse_features
        self.feature_tables = feature_tables
        self.table_dims = table_dims
        self.table_features: dict[str, list[str]] = {}
        for feature, table in sorted(feature_tables.items()):
            self.table_features.setdefault(table, []).append(feature)

    def dedupe(self, features: dict[str, Any]) -> PreparedBatch:
        some = next(iter(features.values()))
        batch = PreparedBatch(features, int(some.shape[0]) if some.shape.rank else 0)
        for feature in self.feature_tables:
            values = features[feature].values.numpy()
            uniq, inverse = np.unique(values, return_inverse=True)
            batch.uniq[feature] = uniq
            batch.index[feature] = inverse.astype(np.int32, copy=False)
        for table, members in self.table_features.items():
            if len(members) == 1:
                batch.table_ids[table] = batch.uniq[members[0]]
            else:
                ids, inverse = np.unique(np.concatenate([batch.uniq[f] for f in members]), return_inverse=True)
                batch.table_ids[table] = ids
                batch.table_inverse[table] = inverse
        return batch

    def assemble(self, batch: PreparedBatch, table_rows: dict[str, np.ndarray]) -> PreparedBatch:
        for table, members in self.table_features.items():
            rows = table_rows[table]
            if len(members) == 1:
                batch.rows[members[0]] = rows
                continue
            offset = 0
            inverse = batch.table_inverse[table]
            for f in members:
                n = batch.uniq[f].size
                batch.rows[f] = rows[inverse[offset:offset + n]]
                offset += n
        return batch

    def step_inputs(self, batch: PreparedBatch) -> tuple[dict, dict]:
        """Rows and indices for every ragged feature of the signature (unused ones get empty blocks)."""
        rows, index = {}, {}
        for f in self.sparse_features:
            if f in batch.rows:
                rows[f], index[f] = batch.rows[f], batch.index[f]
            else:
                rows[f], index[f] = np.zeros((0, 0), np.float32), np.zeros((0,), np.int32)
        return rows, index

    def table_gradients(self, batch: PreparedBatch, grads: dict[str, np.ndarray]) -> dict[str, tuple]:
        out = {}
        for table, members in self.table_features.items():
            if len(members) == 1:
                out[table] = (batch.uniq[members[0]], grads[members[0]])
            else:
                out[table] = (np.concatenate([batch.uniq[f] for f in members]),
                              np.concatenate([grads[f] for f in members]))
        return out
