"""Turn a batch's ragged id features into one deduplicated id list per table, and gradients back into pushes.

The one dedupe of a training step happens here: the ids of every feature reading a table are hashed
once (`ps.kernels.routing.unique_inverse`, first-occurrence order), and the distinct ids go to the
parameter backend as they are (the PS client does not dedupe them again). Each feature's block of rows
is the table's rows it uses, with an index per id into that block.

A batch arrives flat (`flat_reader`): the components of its features (each ragged feature's values and
row splits) as plain tensors, so reading a batch builds no composite tensors in Python, and the traced
step takes the same components.

A traced step takes every feature's rows as one packed float32 buffer, its layout and one packed index
(`step_inputs`), and returns one packed gradient (`unpack_gradients`): a few tensors per step instead of
two per feature, since each conversion between numpy and TensorFlow has a fixed cost.

Gradients flow back per table: a feature's row gradients are already one per distinct id; features
sharing a table are summed here onto the table's distinct ids, except for tables with admission
(`occurrence_threshold > 0`), which must count each feature's occurrence: those send each feature's ids
and the PS sums the repeats (as it does for any repeated id).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from ps.kernels.routing import unique_inverse


def flat_positions(spec: dict) -> dict[str, int]:
    """Where each feature's first component sits in `tf.nest.flatten(features, expand_composites=True)`
    (dict keys sorted; a ragged feature's values come before its row splits)."""
    out, i = {}, 0
    for name in sorted(spec):
        out[name] = i
        i += len(tf.nest.flatten(spec[name], expand_composites=True))
    return out


def _flat_layout(spec: dict) -> tuple[dict[str, int], tuple[int, int]]:
    """`flat_positions`, and where the batch size is read: (component, what to subtract from its length)
    (the first feature's: a ragged one's row splits are one longer than the batch)."""
    positions = flat_positions(spec)
    first = min(spec)
    ragged = isinstance(spec[first], (tf.RaggedTensorSpec, tf.RaggedTensor))
    return positions, (positions[first] + 1, 1) if ragged else (positions[first], 0)


def flat_input(dataset: tf.data.Dataset, extra_key: str | None = None) -> tf.data.Dataset:
    """`dataset`'s feature dicts as tuples of their components (`flat_positions`), `extra_key`'s value (when
    present) moved to the end: iterating it makes plain tensors only."""
    return dataset.map(lambda features: tuple(_flat_element(features, extra_key)))


def flat_reader(dataset: tf.data.Dataset, extra_key: str | None = None) -> Any:
    """A function returning `dataset`'s next batch as the list of tensors `flat_input` would yield, and
    raising StopIteration at its end.

    The iterator's op is called directly and each ragged feature decoded by one op, without building
    RaggedTensors and the element's dict in Python (which cost more than a small model's step). Reading the
    dataset as it is, rather than through `flat_input`'s map, leaves the input's own last stage (a prefetch,
    usually) last: a map behind an autotuned prefetch slowed a ragged input several times over."""
    spec = dataset.element_spec
    names = sorted(spec)
    direct = all(isinstance(spec[k], tf.TensorSpec) or (
        isinstance(spec[k], tf.RaggedTensorSpec) and spec[k].ragged_rank >= 1
        and spec[k].flat_values_spec is None) for k in names)
    if not direct:
        dataset = flat_input(dataset, extra_key)
    iterator = iter(dataset)
    try:
        args = dict(iterator=iterator._iterator_resource, output_types=iterator._flat_output_types,
                    output_shapes=iterator._flat_output_shapes)
    except AttributeError:  # not an eager iterator of this TensorFlow: its own next()
        if not direct:
            return lambda: list(next(iterator))
        return lambda: _flat_element(next(iterator), extra_key)
    get_next = tf.raw_ops.IteratorGetNext
    if not direct:
        return lambda: _get_next(get_next, args)
    decode = tf.raw_ops.RaggedTensorFromVariant
    plan = [(k, spec[k]) for k in names]

    def read() -> list:
        components = _get_next(get_next, args)
        out, extra = [], []
        for (name, s), t in zip(plan, components):
            if name == extra_key:
                extra.append(t)
            elif isinstance(s, tf.RaggedTensorSpec):
                splits, values = decode(encoded_ragged=t, input_ragged_rank=-1, output_ragged_rank=s.ragged_rank,
                                        Tvalues=s.dtype, Tsplits=s.row_splits_dtype)
                out += [values, *splits]
            else:
                out.append(t)
        return out + extra

    return read


def _get_next(get_next: Any, args: dict) -> list:
    try:
        return get_next(**args)
    except tf.errors.OutOfRangeError:
        raise StopIteration from None


def _flat_element(features: dict, extra_key: str | None) -> list:
    """One element's components as `flat_input` yields them."""
    features = dict(features)
    extra = [features.pop(extra_key)] if extra_key is not None and extra_key in features else []
    return [*tf.nest.flatten(features, expand_composites=True), *extra]


@dataclass
class PreparedBatch:
    features: Any  # the flat components (`flat_input`), or a dict of features
    batch_size: int
    table_ids: dict[str, np.ndarray] = field(default_factory=dict)  # table -> distinct ids
    index: dict[str, np.ndarray] = field(default_factory=dict)      # feature -> int32 row of each id in its block
    blocks: dict[str, np.ndarray] = field(default_factory=dict)     # shared tables: feature -> its rows of the table
    rows: dict[str, np.ndarray] = field(default_factory=dict)       # feature -> its block of rows
    dense: dict[str, np.ndarray] | None = None
    layout: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int32))  # what step_inputs packed
    stream_seq: int | None = None  # a stream input's batch number (worker/modeling/stream_source.py)
    args: list | None = None        # the traced step's input tensors (Estimator._stage)
    dense_args: list | None = None  # `dense` as the tensors DenseVariables.assign_tensors takes


class BatchPreparer:
    def __init__(self, sparse_features: list[str], feature_tables: dict[str, str],
                 counting_tables: frozenset[str] = frozenset(), spec: dict | None = None) -> None:
        self.sparse_features = sparse_features
        self.spec = spec  # the features' element spec, for flat batches
        self._flat: tuple[dict[str, int], tuple[int, int]] | None = None
        self.feature_tables = feature_tables
        self.counting_tables = counting_tables
        self.table_features: dict[str, list[str]] = {}
        for feature, table in sorted(feature_tables.items()):
            self.table_features.setdefault(table, []).append(feature)

    def dedupe(self, features: Any) -> PreparedBatch:
        """`features`: a batch's flat components (`flat_input` of `spec`), or its dict of features."""
        if isinstance(features, dict):
            flat, positions, sizer = tf.nest.flatten(features, expand_composites=True), *_flat_layout(features)
        else:
            flat, (positions, sizer) = features, self._layout()
        sized = flat[sizer[0]]
        batch = PreparedBatch(features, int(sized.shape[0]) - sizer[1] if sized.shape.rank else 0)
        for table, members in self.table_features.items():
            values = [flat[positions[f]].numpy() for f in members]
            ids, inverse = unique_inverse(values[0] if len(values) == 1 else np.concatenate(values))
            batch.table_ids[table] = ids
            if len(members) == 1:
                batch.index[members[0]] = inverse.astype(np.int32)
                continue
            offset = 0
            for f, v in zip(members, values):
                where = inverse[offset:offset + v.size]
                offset += v.size
                used = np.zeros(ids.size, bool)
                used[where] = True
                batch.blocks[f] = np.flatnonzero(used)
                batch.index[f] = (np.cumsum(used) - 1)[where].astype(np.int32)
        return batch

    def _layout(self) -> tuple[dict[str, int], tuple[int, int]]:
        if self._flat is None:
            if self.spec is None:
                raise ValueError("a flat batch needs the BatchPreparer's feature spec")
            self._flat = _flat_layout(self.spec)
        return self._flat

    def features(self, batch: PreparedBatch) -> dict[str, Any]:
        """The batch's features as a dict (flat batches packed again)."""
        if isinstance(batch.features, dict):
            return batch.features
        return tf.nest.pack_sequence_as(self.spec, list(batch.features), expand_composites=True)

    def assemble(self, batch: PreparedBatch, table_rows: dict[str, np.ndarray]) -> PreparedBatch:
        for table, members in self.table_features.items():
            rows = table_rows[table]
            for f in members:
                block = batch.blocks.get(f)
                batch.rows[f] = rows if block is None else rows[block]
        return batch

    def step_inputs(self, batch: PreparedBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, layout, index) of every ragged feature of the signature, packed in signature order.

        rows: each feature's block of rows, flattened and concatenated (float32); layout: int32 [features, 3],
        each block's rows, dim and index length (unused features: empty); index: each feature's int32 index
        into its block, concatenated. `unpack_step_inputs` undoes it in the graph."""
        layout = np.zeros((len(self.sparse_features), 3), np.int32)
        blocks, indices = [], []
        for i, f in enumerate(self.sparse_features):
            block = batch.rows.get(f)
            if block is not None:
                layout[i] = (*block.shape, batch.index[f].size)
                blocks.append(block.reshape(-1))
                indices.append(batch.index[f])
        rows = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
        index = np.concatenate(indices) if indices else np.zeros(0, np.int32)
        return rows, layout, index

    def unpack_gradients(self, layout: np.ndarray, grads: np.ndarray) -> dict[str, np.ndarray]:
        """{feature: row gradients} (views) from the packed gradient of the packed rows."""
        out, offset = {}, 0
        for f, (n, dim, _) in zip(self.sparse_features, layout.tolist()):
            if f in self.feature_tables:
                out[f] = grads[offset:offset + n * dim].reshape(n, dim)
            offset += n * dim
        return out

    def table_gradients(self, batch: PreparedBatch, grads: dict[str, np.ndarray]) -> dict[str, tuple]:
        """{table: (ids, row gradients)} ready to push: distinct ids, except per-feature ids of counting tables."""
        out = {}
        for table, members in self.table_features.items():
            ids = batch.table_ids[table]
            if len(members) == 1:
                out[table] = (ids, grads[members[0]])
            elif table in self.counting_tables:
                out[table] = (np.concatenate([ids[batch.blocks[f]] for f in members]),
                              np.concatenate([grads[f] for f in members]))
            else:
                summed = np.zeros((ids.size, grads[members[0]].shape[1]), np.float32)
                for f in members:
                    summed[batch.blocks[f]] += grads[f]
                out[table] = (ids, summed)
        return out


def unpack_step_inputs(features: list[str], rows, layout, index) -> tuple[dict, dict]:
    """In the traced step: {feature: rows [n, dim]} and {feature: index} from `step_inputs`' packing."""
    if not features:
        return {}, {}
    n, dim, length = layout[:, 0], layout[:, 1], layout[:, 2]
    blocks = tf.split(rows, n * dim, num=len(features))
    indices = tf.split(index, length, num=len(features))
    return ({f: tf.reshape(b, tf.stack([n[i], dim[i]])) for i, (f, b) in enumerate(zip(features, blocks))},
            dict(zip(features, indices)))
