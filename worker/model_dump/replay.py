"""A model brought back from a dump: a `MonolithModel` whose functions are the dump's, not the user's code.

`DumpedModel(path)` declares the dumped tables, slices and feature columns, restores the params, and
answers `input_fn` / `model_fn` / `serving_input_receiver_fn` with the SavedModel functions of the
dump, so the unchanged `Estimator` (and exporter) train, evaluate, predict and export it without
importing the model's module. The dense variables are the ones loaded with the functions: `model_fn`
hands them to the trace's `VariableReuse`. In TRAIN mode the loss's gradients are the dump's
`gradients_train` function, attached to the loss with `tf.custom_gradient`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import tensorflow as tf

from protos import model_dump_pb2 as pb
from worker.model_dump import builder, dump_file, serving_parsers
from worker.model_dump.values import from_entry_config, from_value
from worker.modeling import combiners, lookup_inputs
from worker.modeling.estimator_spec import EstimatorSpec, ModeKeys
from worker.modeling.feature import FeatureColumn, FeatureSlotConfig
from worker.modeling.native_model import MonolithModel
from worker.modeling.params import Params
from worker.runtime import variable_reuse

log = logging.getLogger(__name__)

_COMBINERS = {pb.REDUCE_SUM: lambda n: combiners.ReduceSum(), pb.REDUCE_MEAN: lambda n: combiners.ReduceMean(),
              pb.FIRST_N: combiners.FirstN}


class LoadedDump:
    """A checked dump directory and its loaded functions."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.dump = dump_file.read(self.path)
        self.functions = tf.saved_model.load(str(self.path / dump_file.FUNCTIONS_DIR))
        self.variables: list[tf.Variable] = list(self.functions.dense_variables)
        self.model_functions = {f.mode: f for f in self.dump.model_functions}
        for f in self.dump.model_functions:
            name = self.entry(f)
            if not name or not hasattr(self.functions, name):
                raise dump_file.ModelDumpError(f"{self.path}: function {name!r} of mode {f.mode!r} is missing")

    @staticmethod
    def entry(fn: pb.ModelFunction) -> str:
        """The function computing a mode's outputs (train: its gradient function, which computes them too)."""
        return fn.gradient_function or fn.forward_function

    def function(self, name: str):
        return getattr(self.functions, name)

    def signature(self, name: str) -> tuple:
        """(features, rows, index) specs of a model function."""
        (concrete,) = self.function(name).concrete_functions
        return concrete.structured_input_signature[0]


def _restore_params(p: Params, values: dict[str, pb.Value]) -> None:
    for key, value in sorted(values.items()):
        *path, leaf = key.split(".")
        node = p
        for part in path:
            if not node.has(part):
                node.define(part, Params())
            node = getattr(node, part)
        if node.has(leaf):
            setattr(node, leaf, from_value(value))
        else:
            node.define(leaf, from_value(value), "restored from a model dump")


def _whole(x: float) -> Any:  # FeatureSlotConfig takes days as an int, or a float
    return int(x) if float(x).is_integer() else x


class DumpedModel(MonolithModel):
    def __init__(self, dump: str | Path | LoadedDump) -> None:
        loaded = dump if isinstance(dump, LoadedDump) else LoadedDump(dump)
        p = type(self).params()
        _restore_params(p, dict(loaded.dump.params))
        super().__init__(p)
        self._loaded = loaded
        self._optimizer = None
        self._declare_tables()
        for name, value in loaded.dump.user_attributes.items():
            if not p.has(name) and name not in vars(self):
                object.__setattr__(self, name, from_value(value))

    @property
    def dump(self) -> pb.ModelDump:
        return self._loaded.dump

    def _declare_tables(self) -> None:
        for table in self.dump.tables:
            slot = self.ctx.create_feature_slot(FeatureSlotConfig(
                name=table.name, occurrence_threshold=int(table.occurrence_threshold),
                expire_time=_whole(table.expire_time_days)))
            self.fs_dict[table.name] = slot
            for seg in table.segments:
                fs = slot.add_feature_slice(seg.dim, from_entry_config(seg.initializer),
                                            from_entry_config(seg.optimizer), None,
                                            seg.learning_rate if seg.has_learning_rate else None, name=seg.slice_name)
                self.slice_dict.setdefault(table.name, {})[seg.slice_name] = fs
        for f in self.dump.features:
            if f.table not in self.fs_dict:
                raise dump_file.ModelDumpError(f"{self._loaded.path}: feature {f.feature_name!r} reads table "
                                               f"{f.table!r}, which the dump does not declare")
            self.fc_dict[f.feature_name] = FeatureColumn(self.fs_dict[f.table], f.feature_name,
                                                         _COMBINERS[f.combiner](f.max_seq_length))
            if f.shared_name:
                self._share_slot_mapping[f.feature_name] = f.shared_name

    # --- the model's functions -----------------------------------------------------------------------
    def input_fn(self, mode: str) -> tf.data.Dataset:
        return self._loaded.function(builder.input_name(mode))()

    def serving_input_receiver_fn(self):
        if not self.dump.HasField("serving_input_receiver"):
            return None
        receiver = self._loaded.function(builder.RECEIVER)
        (concrete,) = receiver.concrete_functions
        (specs,) = concrete.structured_input_signature[0]
        parsers = list(self.dump.serving_input_receiver.parsers)

        def parse(inputs):
            serving_parsers.record(parsers)  # what the dumped receiver's parsers read (for the export's warmup)
            return receiver(inputs)

        return dict(specs), parse

    def _model_function(self, mode: str, features: dict) -> pb.ModelFunction:
        candidates = [ModeKeys.PREDICT, builder.SERVING] if mode == ModeKeys.PREDICT else [mode]
        takes = {f.mode: sorted(self._loaded.signature(self._loaded.entry(f))[0]) for f in self.dump.model_functions}
        for name in candidates:
            if takes.get(name) == sorted(features):
                return self._loaded.model_functions[name]
        raise ValueError(f"the dump has no {mode!r} function taking features {sorted(features)} (dumped: {takes})")

    def _dense_optimizer(self):
        if self._optimizer is None and self.dump.dense_optimizer_json:
            self._optimizer = tf.keras.optimizers.deserialize(json.loads(self.dump.dense_optimizer_json))
        return self._optimizer

    def model_fn(self, features: dict[str, Any], mode: str):
        fn = self._model_function(mode, features)
        reuse = variable_reuse.current()
        if reuse is not None:
            for var in self._loaded.variables:
                reuse.adopt(var)
        inputs = lookup_inputs.current()
        if inputs is None:
            raise RuntimeError("a dumped model_fn runs inside a worker step (no looked-up rows available)")
        _, rows_sig, _ = self._loaded.signature(self._loaded.entry(fn))
        embedded = list(fn.embedded_features)
        rows = {f: tf.zeros([0, 0], tf.float32) for f in rows_sig}
        index = {f: tf.zeros([0], tf.int32) for f in rows_sig}
        for f in embedded:
            rows[f], index[f] = inputs.rows[f], inputs.index[f]
            inputs.used.add(f)
        if fn.gradient_function:
            out = self._train_outputs(self._loaded.function(fn.gradient_function), features, rows, index, embedded)
        else:
            out = self._loaded.function(fn.forward_function)(features, rows, index)
        for name in fn.extra_outputs:
            self.add_extra_output(name, out["extras"][name])
        heads = [h.name for h in fn.heads]
        preds = {h: out["preds"][h] for h in heads}
        labels = {h: out["labels"][h] for h in heads} if fn.has_loss else None
        return EstimatorSpec(label=labels, pred=preds, head_name=heads, loss=out.get("loss"),
                             classification=[h.classification for h in fn.heads],
                             optimizer=self._dense_optimizer() if mode == ModeKeys.TRAIN else None)

    def _train_outputs(self, gradients, features, rows, index, embedded: list[str]) -> dict[str, Any]:
        """The dumped step's outputs; its loss carries the dumped gradients for the embedded rows and the dense
        variables (the only derivative the worker takes)."""
        trainable = [v for v in self._loaded.variables if v.trainable]
        position = {v.ref(): i for i, v in enumerate(trainable)}
        out: dict[str, Any] = {}

        @tf.custom_gradient
        def loss_of(*embedded_rows):
            out.update(gradients(features, {**rows, **dict(zip(embedded, embedded_rows))}, index))

            def grad(dloss, variables=None):
                row_grads = [dloss * out["row_grads"][f] for f in embedded]
                if not variables:
                    return row_grads
                return row_grads, [dloss * out["dense_grads"][position[v.ref()]] for v in variables]

            return out["loss"], grad

        loss = loss_of(*[rows[f] for f in embedded])
        return {**out, "loss": loss}
