"""Make a model dump: run the model's functions once per mode, note what it declares, save its computations.

Every mode's `model_fn` is traced the way the worker's step traces it (looked-up rows and ids in,
`worker.modeling.lookup_inputs`), while `dump_recording` notes the feature columns and slices. The
SavedModel in `functions/` then holds, as TensorFlow functions over the model's dense variables:
`input_<mode>()` (the mode's dataset), `forward_<mode>(features, rows, index)` for eval, infer and serving
(heads, labels, extra outputs, loss), `gradients_train(...)` (the same in train mode plus the loss's
gradients for the dense variables and each embedded feature's rows), and `receiver(inputs)` (the serving
parse). `model_dump.pb` holds the rest.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import tensorflow as tf

from protos import model_dump_pb2 as pb
from ps.persist.atomic_files import staged_directory
from worker.model_dump import dump_file, serving_parsers
from worker.model_dump.values import NotDumpable, to_entry_config, to_value
from worker.modeling import combiners, dump_recording, monolith_inputs
from worker.modeling.estimator_spec import ModeKeys
from worker.modeling.lookup_inputs import LookupInputs, lookup_inputs
from worker.modeling.params import Params
from worker.modeling.task_context import NativeTaskContext, with_ctx
from worker.runtime.estimator import params_mode, step_signature
from worker.runtime.variable_reuse import VariableReuse

log = logging.getLogger(__name__)

MODES = (ModeKeys.TRAIN, ModeKeys.EVAL, ModeKeys.PREDICT)
SERVING = "serving"
"""The `model_fn` trace fed by the serving receiver's features (PREDICT mode)."""
_MODEL_STATE = {"p", "fs_dict", "fc_dict", "slice_dict"}
_COMBINERS = {combiners.ReduceSum: pb.REDUCE_SUM, combiners.ReduceMean: pb.REDUCE_MEAN,
              combiners.FirstN: pb.FIRST_N}


def forward_name(mode: str) -> str:
    return f"forward_{mode}"


def input_name(mode: str) -> str:
    return f"input_{mode}"


GRADIENTS = "gradients_train"
RECEIVER = "receiver"


def tensor_info(name: str, spec) -> pb.TensorInfo:
    shape = spec.shape.as_list() if spec.shape.rank is not None else []
    info = pb.TensorInfo(name=name, dtype=spec.dtype.name, shape=[-1 if d is None else d for d in shape],
                         last_dim=-1 if not shape or shape[-1] is None else shape[-1])
    if isinstance(spec, tf.RaggedTensorSpec):
        info.is_ragged = True
        info.row_splits_dtype = spec.row_splits_dtype.name
    return info


def _outputs(out, mode: str) -> dict[str, Any]:
    result: dict[str, Any] = {"preds": {h: tf.identity(p) for h, p in zip(out.head_names, out.preds)},
                              "extras": {k: tf.identity(v) for k, v in out.extra_outputs.items()
                                         if isinstance(v, tf.Tensor)}}
    if mode != ModeKeys.PREDICT and mode != SERVING:
        result["labels"] = {h: tf.identity(lb) for h, lb in zip(out.head_names, out.labels)}
        result["loss"] = tf.cast(out.loss, tf.float32)
    return result


@dataclass
class _Trace:
    """One traced mode: its step signature and what `model_fn` returned in it."""

    mode: str
    sparse: list[str]
    signature: tuple
    out: Any = None
    used: list[str] = field(default_factory=list)
    features: dict[str, Any] = field(default_factory=dict)
    extra_losses: int = 0


class DumpBuilder:
    def __init__(self, model) -> None:
        self.model = model
        self.reuse = VariableReuse()
        self.task_ctx = NativeTaskContext(num_ps=0, ps_index=0, num_workers=1, worker_index=0,
                                          model_name=type(model).__name__, sync_backend=None, server_type="dump")
        self.module = tf.Module()
        self.traces: dict[str, _Trace] = {}
        self.receiver: tuple[dict, dict] | None = None  # (input specs, parsed feature specs)
        self.parsers: list = []  # the Monolith parsers the receiver calls (`ParserArgs`)
        self.read: set = set()  # refs of the variables the traced functions read

    def _run_model_fn(self, trace: _Trace, features, rows, index):
        inputs = LookupInputs(rows, index, {f: features[f].row_splits for f in trace.sparse})
        call_mode = ModeKeys.TRAIN if trace.mode in (ModeKeys.TRAIN, ModeKeys.EVAL) else ModeKeys.PREDICT
        with (params_mode(self.model, trace.mode), self.reuse.scope(), lookup_inputs(inputs), with_ctx(self.task_ctx)):
            out = self.model.create_model_fn()(features, call_mode)
        trace.out, trace.used, trace.features = out, sorted(inputs.used), features
        trace.extra_losses = len(self.model.losses)
        return out

    def _trace(self, mode: str, element_spec: dict) -> None:
        sparse, feature_sig, rows_sig, index_sig = step_signature(element_spec)
        trace = self.traces[mode] = _Trace(mode, sparse, (feature_sig, rows_sig, index_sig))

        if mode == ModeKeys.TRAIN:  # the training step's function computes the forward outputs too
            setattr(self.module, GRADIENTS, self._gradients_function(trace))
            return

        def forward(features, rows, index):
            return _outputs(self._run_model_fn(trace, features, rows, index), mode)

        fn = tf.function(forward, input_signature=list(trace.signature), autograph=False)
        self._note_variables(fn.get_concrete_function())
        setattr(self.module, forward_name(mode), fn)

    def _gradients_function(self, trace: _Trace):
        """The training step's computation: the loss's gradients for the dense variables (creation order) and
        for the rows of each embedded feature, before any clipping (the worker clips)."""
        def gradients(features, rows, index):
            with tf.GradientTape() as tape:
                tape.watch(list(rows.values()))
                out = self._run_model_fn(trace, features, rows, index)
            dense = self.reuse.trainable
            grads = tape.gradient(out.loss, dense + [rows[f] for f in trace.used],
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            result = _outputs(out, trace.mode)
            result["dense_grads"] = [tf.convert_to_tensor(g) for g in grads[:len(dense)]]
            result["row_grads"] = {f: tf.convert_to_tensor(g) for f, g in zip(trace.used, grads[len(dense):])}
            return result

        fn = tf.function(gradients, input_signature=list(trace.signature), autograph=False)
        self._note_variables(fn.get_concrete_function())
        return fn

    def _note_variables(self, concrete) -> None:
        self.read.update(v.ref() for v in concrete.graph.variables)

    def dense_variables(self) -> list[tf.Variable]:
        """The trainable variables and those the model's functions read, in creation order (not the variables a
        Keras optimizer created in `model_fn`)."""
        return [v for v in self.reuse.variables if v.trainable or v.ref() in self.read]

    def _input_function(self, mode: str):
        def make():
            with with_ctx(self.task_ctx), params_mode(self.model, mode):
                ds = self.model.create_input_fn(mode)()
            if not isinstance(ds, tf.data.Dataset) or not isinstance(ds.element_spec, dict):
                raise ValueError(f"input_fn({mode!r}) must return a tf.data.Dataset of feature dicts, got {ds!r}")
            return ds

        fn = tf.function(make, input_signature=[], autograph=False)
        return fn, fn.get_concrete_function().structured_outputs.element_spec

    def _trace_receiver(self) -> None:
        receiver = self.model.create_serving_input_receiver_fn()
        spec = receiver() if callable(receiver) else None
        if spec is None:
            return
        if not (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], dict) and callable(spec[1])):
            raise ValueError(f"{type(self.model).__name__}.serving_input_receiver_fn() must return ({{input name: "
                             f"tf.TensorSpec}}, parse_fn(inputs) -> features), got {spec!r}")
        inputs = {k: tf.TensorSpec(v.shape, v.dtype, name=k) for k, v in spec[0].items()}
        parse = spec[1]
        fn = tf.function(lambda received: parse(received), input_signature=[inputs], autograph=False)
        with monolith_inputs.recording() as parsers:
            parsed = fn.get_concrete_function().structured_outputs
        self.parsers = list(parsers)
        if not isinstance(parsed, dict):
            raise ValueError(f"the serving parse function must return a dict of features, got {parsed!r}")
        self.module.receiver = fn
        features = {k: tf.type_spec_from_value(v) for k, v in parsed.items()}
        self.receiver = (inputs, features)
        self._trace(SERVING, features)

    def build(self) -> None:
        for mode in MODES:
            fn, element_spec = self._input_function(mode)
            setattr(self.module, input_name(mode), fn)
            self._trace(mode, element_spec)
        self._trace_receiver()
        self.module.dense_variables = self.dense_variables()


def _flatten_params(params: Params, prefix: str = "") -> dict[str, pb.Value]:
    out: dict[str, pb.Value] = {}
    for name, value in params:
        key = f"{prefix}{name}"
        if isinstance(value, Params):
            out.update(_flatten_params(value, f"{key}."))
            continue
        if callable(value):
            log.info("param %s is not dumped: %r is code", key, value)
            continue
        try:
            out[key] = to_value(value)
        except NotDumpable as exc:
            log.warning("param %s is not dumped: %s", key, exc)
    return out


def _user_attributes(model) -> dict[str, pb.Value]:
    out = {}
    for name, value in vars(model).items():
        if name.startswith("_") or name in _MODEL_STATE or callable(value):
            continue
        try:
            out[name] = to_value(value)
        except NotDumpable:
            log.info("model attribute %s (%s) is not dumped: not a plain value", name, type(value).__name__)
    return out


def _feature_columns(model, recorder: dump_recording.DumpRecorder) -> list[pb.FeatureColumn]:
    out = []
    for name, fc in sorted(recorder.features.items()):
        cfg = fc.slot.config
        combiner = _COMBINERS.get(type(fc.combiner))
        if combiner is None:
            raise ValueError(f"feature {name!r} uses combiner {fc.combiner!r}: a dump knows ReduceSum, ReduceMean "
                             f"and FirstN")
        out.append(pb.FeatureColumn(
            feature_name=name, table=fc.slot.name, combiner=combiner,
            max_seq_length=fc.combiner.n if isinstance(fc.combiner, combiners.FirstN) else 0,
            occurrence_threshold=cfg.occurrence_threshold, expire_time_days=float(cfg.expire_time),
            shared_name=recorder.shared_names.get(name, ""), has_slot_id=cfg.slot_id is not None,
            slot_id=cfg.slot_id or 0))
    return out


def _slices(recorder: dump_recording.DumpRecorder) -> list[pb.EmbeddingSlice]:
    out = []
    for (feature, _), use in sorted(recorder.slices.items()):
        fs = use.slice
        (segment,) = [seg for s, seg, _ in fs.slot.segments() if s is fs]
        out.append(pb.EmbeddingSlice(
            feature_name=feature, slice_name=fs.name, table=fs.slot.name, start=fs.start, dim=fs.dim,
            initializer=to_entry_config(segment["initializer"]), optimizer=to_entry_config(segment["optimizer"]),
            has_learning_rate=use.learning_rate is not None, learning_rate=use.learning_rate or 0.0))
    return out


def _tables(model) -> list[pb.TableConfig]:
    out = []
    for name, slot in sorted(model.ctx.feature_factory.slots.items()):
        if not slot.slices:
            continue
        table = pb.TableConfig(name=name, occurrence_threshold=slot.config.occurrence_threshold,
                               expire_time_days=float(slot.config.expire_time))
        for fs, segment, rate in slot.segments():
            if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))):
                raise ValueError(f"slice {fs.name!r} of table {name!r} has a learning-rate function {rate!r}: a model "
                                 f"dump records constants only")
            table.segments.add(dim=fs.dim, initializer=to_entry_config(segment["initializer"]),
                               optimizer=to_entry_config(segment["optimizer"]), slice_name=fs.name,
                               has_learning_rate=rate is not None, learning_rate=float(rate or 0.0))
        out.append(table)
    return out


def _label_feature(label, features: dict) -> str:
    return next((k for k, v in features.items() if v is label), "")


def _model_function(trace: _Trace) -> pb.ModelFunction:
    out = trace.out
    has_loss = trace.mode in (ModeKeys.TRAIN, ModeKeys.EVAL)
    train = trace.mode == ModeKeys.TRAIN
    fn = pb.ModelFunction(mode=trace.mode, has_loss=has_loss,
                          forward_function="" if train else forward_name(trace.mode),
                          gradient_function=GRADIENTS if train else "",
                          extra_outputs=sorted(k for k, v in out.extra_outputs.items() if isinstance(v, tf.Tensor)),
                          extra_losses=trace.extra_losses, embedded_features=trace.used)
    for head, cls, label in zip(out.head_names, out.classification, out.labels):
        fn.heads.add(name=head, classification=cls,
                     label_feature=_label_feature(label, trace.features) if has_loss else "")
    return fn


def _dense_optimizer(optimizer) -> str:
    if optimizer is None:
        return ""
    try:
        return json.dumps(tf.keras.optimizers.serialize(optimizer), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the dense optimizer {optimizer!r} cannot be dumped as a Keras config: {exc}") from exc


def _project_version() -> str:
    try:
        return metadata.version("monolith-ps")
    except metadata.PackageNotFoundError:
        return ""


def describe(model, builder: DumpBuilder, recorder: dump_recording.DumpRecorder, model_class: str) -> pb.ModelDump:
    dump = pb.ModelDump(format_version=dump_file.FORMAT_VERSION, model_class=model_class,
                        project_version=_project_version(), tensorflow_version=tf.__version__,
                        params=_flatten_params(model.p), user_attributes=_user_attributes(model),
                        features=_feature_columns(model, recorder), slices=_slices(recorder), tables=_tables(model),
                        dense_optimizer_json=_dense_optimizer(builder.traces[ModeKeys.TRAIN].out.optimizer))
    for mode in MODES:
        trace = builder.traces[mode]
        element_spec = trace.signature[0]
        dump.input_functions.add(
            mode=mode, features=[tensor_info(k, v) for k, v in sorted(element_spec.items())],
            label_features=sorted({h.label_feature for h in _model_function(trace).heads if h.label_feature}),
            embedded_features=trace.used, function=input_name(mode))
    for trace in builder.traces.values():
        dump.model_functions.append(_model_function(trace))
    if builder.receiver is not None:
        inputs, features = builder.receiver
        dump.serving_input_receiver.CopyFrom(pb.ServingInputReceiver(
            receiver_tensors=[tensor_info(k, v) for k, v in inputs.items()],
            features=[tensor_info(k, v) for k, v in sorted(features.items())], function=RECEIVER,
            parsers=[serving_parsers.to_pb(a) for a in builder.parsers]))
        serving = builder.traces[SERVING].out
        dump.signatures.add(name="serving_default", inputs=sorted(inputs), outputs=list(serving.head_names))
        for name, value in sorted(serving.extra_outputs.items()):
            if isinstance(value, tf.Tensor):
                dump.signatures.add(name=name, inputs=sorted(inputs), outputs=[name])
    for var in builder.dense_variables():
        dump.dense_variables.add(name=var.name, shape=var.shape.as_list(), dtype=var.dtype.name,
                                 trainable=var.trainable)
    return dump


def dump_model(model, path: str | Path, model_class: str = "") -> pb.ModelDump:
    """Dump `model` (a fresh `MonolithModel`: nothing traced yet) into the directory `path`, atomically: the
    directory appears complete or not at all (an existing one is replaced whole)."""
    builder = DumpBuilder(model)
    with dump_recording.recording() as recorder:
        builder.build()
    dump = describe(model, builder, recorder, model_class or f"{type(model).__module__}:{type(model).__qualname__}")
    with staged_directory(Path(path)) as staging:
        functions = staging / dump_file.FUNCTIONS_DIR
        tf.saved_model.save(builder.module, str(functions))
        dump.function_files.extend(dump_file.fsync_tree(functions))
        dump_file.write(staging, dump)
    log.info("dumped %s to %s: %d tables, %d dense variables, modes %s", dump.model_class, path, len(dump.tables),
             len(dump.dense_variables), [f.mode for f in dump.model_functions])
    return dump
