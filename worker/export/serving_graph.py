"""The model's serving computation, built from the user's unchanged `model_fn`.

parse the serving input (`serving_input_receiver_fn`) -> the distinct ids of each sparse feature ->
their rows (from tables inside the SavedModel, or fed in by the entry server after a lookup on the
serving PS shards) -> `model_fn` in PREDICT mode reading them through `worker.lookup_inputs`, exactly
as the worker's step does, so exported predictions equal `Estimator.predict`.

A first trace ("discovery") creates the dense variables and finds which features the model reads
from which tables, what heads and extra outputs it has, and what the serving input parses.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from services.sample_gen import ParserArgs
from worker.export.exported_tables import check_keys, signature_key
from worker.modeling import monolith_inputs
from worker.modeling.estimator_spec import ModeKeys
from worker.modeling.lookup_inputs import LookupInputs, lookup_inputs
from worker.modeling.task_context import NativeTaskContext, with_ctx
from worker.runtime.variable_reuse import VariableReuse

log = logging.getLogger(__name__)

RowsOf = Callable[[str, str, tf.Tensor], tf.Tensor]   # (feature, table, distinct ids) -> [n, dim] float32


IDS_KEY, ID_SPLIT_KEY, ROWS_KEY = "id", "id_split", "flat_emb"
"""The entry's lookup tensors, named as the serving PS sub-models' `raw_lookup` names them: every table's
distinct ids in one tensor (tables in name order), `num_tables + 1` offsets of each table's ids in it, and
their rows flattened and concatenated in the same order."""


def feature_key(feature: str, part: str = "") -> str:
    return f"feat__{signature_key(feature)}" + (f"__{part}" if part else "")


def positions_key(feature: str) -> str:
    return f"pos__{signature_key(feature)}"


class _OnDemand(dict):
    """Rows/index of a feature, computed when a feature column first asks for them."""

    def __init__(self, keys, resolve: Callable[[str], None]) -> None:
        super().__init__()
        self._keys, self._resolve = set(keys), resolve

    def __contains__(self, key) -> bool:
        return key in self._keys

    def __missing__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        self._resolve(key)
        return dict.__getitem__(self, key)


@dataclass
class Discovery:
    feature_tables: dict[str, str] = field(default_factory=dict)   # sparse feature read -> its table
    heads: list[str] = field(default_factory=list)
    extra_outputs: dict[str, list[str]] = field(default_factory=dict)  # signature -> its output keys
    parser_args: list[ParserArgs] = field(default_factory=list)
    ragged: list[str] = field(default_factory=list)                      # every sparse feature parsed
    dense_specs: dict[str, tf.TensorSpec] = field(default_factory=dict)  # every other feature parsed

    @property
    def tables(self) -> list[str]:
        return sorted(set(self.feature_tables.values()))

    def table_features(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for feature, table in sorted(self.feature_tables.items()):
            out.setdefault(table, []).append(feature)
        return out


def _extra_tensors(name: str, value) -> dict[str, tf.Tensor]:
    if isinstance(value, tf.Tensor):
        return {name: value}
    if isinstance(value, dict) and value and all(isinstance(v, tf.Tensor) for v in value.values()):
        return {signature_key(f"{name}_{k}"): v for k, v in value.items()}
    return {}


class ServingGraph:
    def __init__(self, model, table_dims: dict[str, int]) -> None:
        receiver = model.create_serving_input_receiver_fn()
        spec = receiver() if callable(receiver) else None
        if not (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], dict) and callable(spec[1])):
            raise ValueError(f"{type(model).__name__}.serving_input_receiver_fn() must return ({{input name: "
                             f"tf.TensorSpec}}, parse_fn(inputs) -> features), got {spec!r}")
        self.model = model
        self.input_specs = {k: tf.TensorSpec(v.shape, v.dtype, name=k) for k, v in spec[0].items()}
        for k in self.input_specs:
            if not k.isidentifier():
                raise ValueError(f"serving input name {k!r} must be an identifier (letters, digits, '_')")
        self.parse = spec[1]
        self.table_dims = dict(table_dims)
        self.reuse = VariableReuse()
        self.task_ctx = NativeTaskContext(num_ps=0, ps_index=0, num_workers=1, worker_index=0,
                                          model_name=type(model).__name__, sync_backend=None, server_type="export")
        self.discovery = self._discover()

    # --- building blocks ---------------------------------------------------------------------------
    def _sparse(self, inputs) -> tuple[dict, dict[str, tf.RaggedTensor]]:
        features = self.parse(inputs)
        if not isinstance(features, dict):
            raise ValueError(f"the serving parse function must return a dict of features, got {type(features)}")
        ragged = {k: v for k, v in features.items() if isinstance(v, tf.RaggedTensor)}
        for k, v in ragged.items():
            if v.dtype != tf.int64 or v.ragged_rank != 1:
                raise ValueError(f"sparse serving feature {k!r} must be a ragged int64 [batch, None] tensor, got {v}")
        return features, ragged

    def _table_of(self, feature: str) -> str:
        fc = self.model.fc_dict.get(feature)
        if fc is None:
            raise ValueError(f"feature {feature!r} has no embedding feature column")
        table = fc.slot.name
        if table not in self.table_dims:
            raise ValueError(f"table {table!r} (feature {feature!r}) is not in the checkpoint "
                             f"(tables: {sorted(self.table_dims)})")
        return table

    def _run(self, features: dict, ragged: dict[str, tf.RaggedTensor], rows_of: RowsOf, used: set[str]):
        rows = _OnDemand(ragged, lambda f: resolve(f))
        index = _OnDemand(ragged, lambda f: resolve(f))

        def resolve(f: str) -> None:
            uniq, idx = tf.unique(ragged[f].values, out_idx=tf.int32)
            dict.__setitem__(rows, f, rows_of(f, self._table_of(f), uniq))
            dict.__setitem__(index, f, idx)
            used.add(f)

        inputs = LookupInputs(rows, index, {f: v.row_splits for f, v in ragged.items()})
        model_fn = self.model.create_model_fn()
        with self.reuse.scope(), lookup_inputs(inputs), with_ctx(self.task_ctx):
            return model_fn(features, ModeKeys.PREDICT)

    def _discover(self) -> Discovery:
        found = Discovery()

        def probe(inputs):
            features, ragged = self._sparse(inputs)
            used: set[str] = set()
            out = self._run(features, ragged, lambda f, t, ids: tf.zeros([tf.size(ids), self.table_dims[t]]), used)
            found.feature_tables.update({f: self._table_of(f) for f in used})
            found.ragged[:] = sorted(ragged)
            found.dense_specs.update({k: tf.TensorSpec([None, *v.shape[1:]], v.dtype) for k, v in features.items()
                                      if k not in ragged and isinstance(v, tf.Tensor)})
            found.heads[:] = out.head_names  # the probe may be traced twice (variable creation)
            for name, value in out.extra_outputs.items():
                tensors = _extra_tensors(name, value)
                if tensors:
                    found.extra_outputs[name] = list(tensors)
                else:
                    log.info("extra output %r is not a tensor (or dict of tensors): not exported", name)
            return tf.constant(0)

        with monolith_inputs.recording() as records:
            tf.function(probe, input_signature=[self.input_specs], autograph=False).get_concrete_function()
        found.parser_args = list(records)
        check_keys(found.tables)
        check_keys(found.ragged + list(found.dense_specs))
        for name in found.extra_outputs:
            if name in ("serving_default", "lookup", "raw_lookup", "hashtable_assign", "embedding_ids"):
                raise ValueError(f"extra output name {name!r} collides with an exported signature name")
        log.info("serving graph: heads %s, features -> tables %s, extra outputs %s", found.heads,
                 found.feature_tables, sorted(found.extra_outputs))
        return found

    # --- what the exporters save -------------------------------------------------------------------
    def assign_dense(self, values: dict[str, np.ndarray]) -> None:
        """Give the model's trainable variables the checkpoint's dense values (`dense_<i>` by creation order)."""
        trainable = self.reuse.trainable
        missing = [f"dense_{i:04d}" for i in range(len(trainable)) if f"dense_{i:04d}" not in values]
        if missing:
            raise ValueError(f"the checkpoint lacks dense values {missing} for the model's {len(trainable)} trainable "
                             f"variables (was it written by this model?)")
        for i, var in enumerate(trainable):
            value = values[f"dense_{i:04d}"]
            if tuple(value.shape) != tuple(var.shape):
                raise ValueError(f"dense_{i:04d}: checkpoint shape {value.shape}, model variable {var.name} "
                                 f"has {tuple(var.shape)}")
            var.assign(value)

    def dense_layout(self) -> dict[str, dict]:
        """Where each dense value of training (`dense_<i>`, the model's trainable variables by creation order)
        sits among the saved variables (`reuse.variables`, saved as the SavedModel's `dense` list), with its
        shape: the entry server matches the dense sync's values to its variables by this, by name."""
        position = {id(v): k for k, v in enumerate(self.reuse.variables)}
        return {f"dense_{i:04d}": {"index": position[id(var)], "shape": [int(d) for d in var.shape],
                                   "variable": var.name}
                for i, var in enumerate(self.reuse.trainable)}

    def _outputs(self, out, signature: str) -> dict[str, tf.Tensor]:
        if signature == "serving_default":
            return {h: tf.identity(p) for h, p in zip(out.head_names, out.preds)}
        return {k: tf.identity(v) for k, v in _extra_tensors(signature, out.extra_outputs[signature]).items()}

    def signatures(self) -> list[str]:
        return ["serving_default", *sorted(self.discovery.extra_outputs)]

    def standalone_function(self, signature: str, rows_of_table: Callable[[str, tf.Tensor], tf.Tensor]):
        """serving inputs -> outputs, rows read from tables inside the SavedModel."""
        def serve(inputs):
            features, ragged = self._sparse(inputs)
            out = self._run(features, ragged, lambda f, t, ids: rows_of_table(t, ids), set())
            return self._outputs(out, signature)

        return tf.function(serve, input_signature=[self.input_specs], autograph=False)

    def _table_ids(self, ragged: dict[str, tf.RaggedTensor]):
        """Distinct ids per table (features sharing a table send each id once) and, per feature, where each of
        its distinct ids sits in its table's list."""
        table_ids, positions = {}, {}
        for table, members in self.discovery.table_features().items():
            uniqs = [tf.unique(ragged[f].values, out_idx=tf.int32)[0] for f in members]
            ids, inverse = tf.unique(tf.concat(uniqs, axis=0), out_idx=tf.int32)
            table_ids[table] = ids
            offsets = tf.math.cumsum([tf.size(u) for u in uniqs], exclusive=True)
            for i, (f, u) in enumerate(zip(members, uniqs)):
                positions[f] = inverse[offsets[i]:offsets[i] + tf.size(u)]
        return table_ids, positions

    def ids_function(self):
        """Entry sub-model: serving inputs -> the distinct ids of every table (`id`, tables in name order, with
        `id_split` offsets), and the parsed features with each feature's positions in its table's ids, so the
        dense part does not parse again. One ids tensor for all tables: the entry server takes it out of
        TensorFlow once and routes it to the serving PS shards as one lookup."""
        def embedding_ids(inputs):
            features, ragged = self._sparse(inputs)
            table_ids, positions = self._table_ids(ragged)
            tables = self.discovery.tables
            sizes = [tf.size(table_ids[t], out_type=tf.int64) for t in tables]
            out = {IDS_KEY: tf.concat([table_ids[t] for t in tables], 0) if tables else tf.zeros([0], tf.int64),
                   ID_SPLIT_KEY: tf.math.cumsum(tf.stack([tf.constant(0, tf.int64), *sizes]))}
            out.update({positions_key(f): tf.identity(p) for f, p in positions.items()})
            for f in self.discovery.ragged:
                out[feature_key(f, "values")] = tf.identity(ragged[f].values)
                out[feature_key(f, "splits")] = tf.cast(ragged[f].row_splits, tf.int64)
            out.update({feature_key(k): tf.identity(features[k]) for k in self.discovery.dense_specs})
            return out

        return tf.function(embedding_ids, input_signature=[self.input_specs], autograph=False)

    def entry_function(self, signature: str):
        """Entry sub-model: `embedding_ids`' features, positions and `id_split` + `flat_emb` (the rows of `id`,
        flattened and concatenated in order) -> outputs."""
        d = self.discovery
        spec = {}
        for f in d.ragged:
            spec[feature_key(f, "values")] = tf.TensorSpec([None], tf.int64, name=feature_key(f, "values"))
            spec[feature_key(f, "splits")] = tf.TensorSpec([None], tf.int64, name=feature_key(f, "splits"))
        for k, v in d.dense_specs.items():
            spec[feature_key(k)] = tf.TensorSpec(v.shape, v.dtype, name=feature_key(k))
        for f in d.feature_tables:
            spec[positions_key(f)] = tf.TensorSpec([None], tf.int32, name=positions_key(f))
        spec[ID_SPLIT_KEY] = tf.TensorSpec([len(d.tables) + 1], tf.int64, name=ID_SPLIT_KEY)
        spec[ROWS_KEY] = tf.TensorSpec([None], tf.float32, name=ROWS_KEY)
        dims = [self.table_dims[t] for t in d.tables]

        def serve(inputs):
            split = inputs[ID_SPLIT_KEY]
            sizes = (split[1:] - split[:-1]) * tf.constant(dims, tf.int64)
            flat = tf.split(inputs[ROWS_KEY], sizes, num=len(dims)) if dims else []  # wrong sizes: InvalidArgument
            table_rows = {t: tf.reshape(part, [-1, dim]) for t, part, dim in zip(d.tables, flat, dims)}
            ragged = {f: tf.RaggedTensor.from_row_splits(inputs[feature_key(f, "values")],
                                                         inputs[feature_key(f, "splits")], validate=False)
                      for f in d.ragged}
            features = {**{k: inputs[feature_key(k)] for k in d.dense_specs}, **ragged}
            out = self._run(features, ragged,
                            lambda f, t, ids: tf.gather(table_rows[t], inputs[positions_key(f)]), set())
            return self._outputs(out, signature)

        return tf.function(serve, input_signature=[spec], autograph=False)
