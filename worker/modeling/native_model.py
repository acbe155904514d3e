"""The model base classes users subclass: parameters, embedding feature columns/slices, heads, hooks.

`model_fn` is traced by the worker (once per mode); per-trace state (auxiliary losses, extra outputs)
lives on the traced graph, as Monolith kept it on the TF1 graph, while slots/slices persist across
traces because they define the PS tables.
"""
from __future__ import annotations

import abc
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from worker.modeling import combiners as combiners_mod
from worker.modeling import dump_recording
from worker.modeling.estimator_spec import EstimatorSpec, ModeKeys
from worker.modeling.feature import FeatureColumn, FeatureFactory, FeatureSlice, FeatureSlotConfig
from worker.modeling.heads import get_sigmoid_loss_and_pred, get_softmax_loss_and_pred  # noqa: F401  (public surface)
from worker.modeling.native_task import NativeContext, NativeTask
from worker.modeling.params import Params

log = logging.getLogger(__name__)

_OUT_TYPES = {"concat": "concat", "stack": "stack", "add_n": "addn", "addn": "addn", None: "none"}


@dataclass
class SliceConfig:
    feature_name: str
    start: int
    end: int


@dataclass
class OutConfig:
    """How a layout's slices are combined (`concat`/`stack`/`addn`/`none`) and the output shapes (batch = -1)."""

    out_type: str
    slice_configs: list[SliceConfig] = field(default_factory=list)
    shape: list[list[int]] = field(default_factory=list)


@dataclass
class ModelOutputs:
    """`model_fn`'s result normalised to per-head lists (what the worker step consumes)."""

    mode: str
    head_names: list[str]
    preds: list[tf.Tensor]
    labels: list[tf.Tensor | None]
    classification: list[bool]
    loss: tf.Tensor | None
    optimizer: Any
    extra_outputs: dict[str, tf.Tensor]


def _graph_list(name: str) -> list:
    graph = tf.compat.v1.get_default_graph()
    if not hasattr(graph, name):
        setattr(graph, name, [])
    return getattr(graph, name)


def _graph_dict(name: str) -> dict:
    graph = tf.compat.v1.get_default_graph()
    if not hasattr(graph, name):
        setattr(graph, name, {})
    return getattr(graph, name)


def _slice_embeddings(features, slice_dim, group_out_type: str, one) -> list:
    """`lookup_embedding_slice`'s forms of `features`, each feature looked up by `one(feature, dim)`."""
    is_seq = isinstance(features, (list, tuple))
    if isinstance(features, dict):
        return [one(f, d) for f, d in features.items()]
    if is_seq and isinstance(slice_dim, int):
        if all(isinstance(f, (str, int, FeatureColumn)) for f in features):
            return [one(f, slice_dim) for f in features]
        if all(isinstance(f, (list, tuple)) for f in features):
            if group_out_type not in ("concat", "add_n"):
                raise ValueError(f"group_out_type must be 'concat' or 'add_n', got {group_out_type!r}")
            groups = [[one(f, slice_dim) for f in group] for group in features]
            return [tf.add_n(g) if group_out_type == "add_n" else tf.concat(g, axis=1) for g in groups]
        raise ValueError("ValueError for features")
    if is_seq and slice_dim is None and all(isinstance(f, (list, tuple)) and len(f) == 2 and isinstance(f[1], int)
                                            for f in features):
        return [one(f, d) for f, d in features]
    raise ValueError("ValueError for features")


def _combine(embeddings: list, out_type: str) -> tf.Tensor:
    if out_type == "concat":
        return tf.concat(embeddings, axis=1)
    if out_type == "stack":
        return tf.stack(embeddings, axis=1)
    if out_type in ("add_n", "addn"):
        return tf.add_n(embeddings)
    raise ValueError(f"out_type must be one of concat/stack/add_n/addn/None, got {out_type!r}")


class MonolithBaseModel(NativeTask, abc.ABC):
    @classmethod
    def params(cls) -> Params:
        p = super().params()
        p.define("output_path", None, "where predict/eval outputs are written (part-<worker>)")
        p.define("output_fields", None, "comma-separated feature names written before the predictions")
        p.define("delimiter", "\t", "field delimiter of the output files")
        p.define("file_name", "", "output file name")
        p.define("enable_grads_and_vars_summary", False)
        p.define("dense_weight_decay", 0.0, "L2 added to dense gradients: g + wd * w")
        p.define("clip_norm", 1000.0, "global-norm clip over dense and embedding gradients")
        p.define("sparse_norm_warmup_steps", None)
        p.define("default_occurrence_threshold", 0)
        return p

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params if params is not None else type(self).params())
        self.fs_dict: dict[str, Any] = {}
        self.fc_dict: dict[str, FeatureColumn] = {}
        self.slice_dict: dict[str, dict[str, FeatureSlice]] = {}
        self._layout_dict: dict[str, OutConfig] = {}
        self._occurrence_threshold: dict[str, int] = {}
        self._share_slot_mapping: dict[str, str] = {}
        self._default_dense_optimizer = None
        self._hooks: list = []
        self._ctx = NativeContext(feature_factory=FeatureFactory())

    def __getattr__(self, name: str) -> Any:
        p = self.__dict__.get("p")
        if p is None:
            raise AttributeError(name)
        if name == "batch_size":
            return p.eval.per_replica_batch_size if p.mode == ModeKeys.EVAL else p.train.per_replica_batch_size
        if p.has(name):
            return getattr(p, name)
        raise AttributeError(f"{type(self).__name__} has no attribute or parameter {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        p = self.__dict__.get("p")
        if name == "batch_size" and p is not None:
            p.train.per_replica_batch_size = value
            p.eval.per_replica_batch_size = value
        elif p is not None and p.has(name):
            setattr(p, name, value)
        else:
            object.__setattr__(self, name, value)

    # --- state -------------------------------------------------------------------------------------
    def _get_real_mode(self, mode: str) -> str:
        if mode == ModeKeys.PREDICT:
            return ModeKeys.PREDICT
        if mode == ModeKeys.TRAIN:
            return self.mode
        raise ValueError("model error!")

    def is_fused_layout(self) -> bool:
        return self.ctx.layout_factory is not None

    def instantiate(self):
        return self

    @property
    def losses(self) -> list:
        return _graph_list("_monolith_losses")

    def add_loss(self, losses) -> None:
        if isinstance(losses, (list, tuple)):
            self.losses.extend(losses)
        else:
            self.losses.append(losses)

    @property
    def _training_hooks(self) -> list:
        return self._hooks

    @property
    def _export_outputs(self) -> dict:
        return _graph_dict("_monolith_export_outputs")

    def add_extra_output(self, name: str, outputs, head_name=None, head_type=None) -> None:
        """Register a named output: hooks can fetch it by name; exporters put it in the signature."""
        if name in self._export_outputs:
            raise KeyError(f"extra output {name!r} already exists")
        self._export_outputs[name] = outputs

    def add_training_hook(self, hook) -> None:
        """At most one Kafka and one File metric hook (matched by class name, subclasses included)."""
        def kinds(h) -> set[str]:
            return {c.__name__ for c in type(h).__mro__} & {"KafkaMetricHook", "FileMetricHook"}

        for kind in kinds(hook):
            if any(kind in kinds(h) for h in self._hooks):
                raise ValueError(f"only one {kind} may be added to a model")
        self._hooks.append(hook)

    def add_layout(self, name: str, slice_list, out_type, shape_list) -> OutConfig:
        if out_type not in _OUT_TYPES:
            raise ValueError(f"out_type must be one of concat/stack/add_n/addn/None, got {out_type!r}")
        cfg = OutConfig(out_type=_OUT_TYPES[out_type])
        for feature_name, fs in slice_list:
            cfg.slice_configs.append(SliceConfig(feature_name, fs.start, fs.end))
        for shape in shape_list:
            dims = [d if d is None or isinstance(d, int) else getattr(d, "value", d) for d in shape]
            cfg.shape.append([-1] + [int(d) if d is not None else -1 for d in dims[1:]])
        self._layout_dict[name] = cfg
        return cfg

    @property
    def layout_dict(self) -> dict[str, OutConfig]:
        return self._layout_dict

    @layout_dict.setter
    def layout_dict(self, value: dict[str, OutConfig]) -> None:
        self._layout_dict = value

    def clean(self) -> None:
        self.fs_dict.clear()
        self.fc_dict.clear()
        self.slice_dict.clear()
        self._occurrence_threshold.clear()

    # --- model_fn plumbing -------------------------------------------------------------------------
    def create_input_fn(self, mode: str):
        return lambda: self.input_fn(mode)

    def create_serving_input_receiver_fn(self):
        return self.serving_input_receiver_fn

    def create_model_fn(self):
        def model_fn_internal(features, mode) -> ModelOutputs:
            real_mode = self._get_real_mode(mode)
            return self._normalize(self.model_fn(features, real_mode), real_mode)

        return model_fn_internal

    def _normalize(self, spec, mode: str) -> ModelOutputs:
        optimizer = None
        if isinstance(spec, EstimatorSpec):
            label, loss, pred, head_name, classification = (spec.label, spec.loss, spec.pred, spec.head_name,
                                                             spec.classification)
            optimizer = spec.optimizer
        elif isinstance(spec, (tuple, list)) and len(spec) == 3:
            label, loss, pred = spec
            head_name = list(pred) if isinstance(pred, dict) else self.p.metrics.deep_insight_target
            classification = True
            log.warning("model_fn returned (label, loss, pred): treating every head as classification")
        else:
            raise Exception("EstimatorSpec Error!")
        heads, preds, labels = self._align_heads(head_name, pred, label, mode)
        if isinstance(classification, (list, tuple)):
            if len(classification) != len(heads):
                raise ValueError(f"classification has {len(classification)} entries for {len(heads)} heads {heads}")
            classes = [bool(c) for c in classification]
        else:
            classes = [bool(classification)] * len(heads)
        if mode != ModeKeys.PREDICT:
            if loss is None:
                raise ValueError(f"model_fn returned no loss in mode {mode!r}")
            if self.losses:
                loss = loss + tf.add_n(self.losses)
            if mode == ModeKeys.TRAIN:
                optimizer = optimizer or self._default_dense_optimizer  # None: checked by the Estimator
        return ModelOutputs(mode, heads, preds, labels, classes, loss, optimizer, dict(self._export_outputs))

    @staticmethod
    def _align_heads(head_name, pred, label, mode):
        if isinstance(pred, dict):
            heads = list(pred)
            preds = [pred[h] for h in heads]
            if isinstance(label, dict):
                missing = [h for h in heads if h not in label]
                if missing and mode != ModeKeys.PREDICT:
                    raise ValueError(f"label dict lacks heads {missing}; pred heads are {heads}")
                labels = [label.get(h) for h in heads]
            else:
                labels = list(label) if isinstance(label, (list, tuple)) else [label] * len(heads)
        elif isinstance(pred, (list, tuple)):
            preds = list(pred)
            heads = list(head_name) if isinstance(head_name, (list, tuple)) else None
            if heads is None or len(heads) != len(preds):
                raise ValueError(f"{len(preds)} predictions need as many head names, got head_name={head_name!r}")
            labels = list(label) if isinstance(label, (list, tuple)) else [label] * len(preds)
        else:
            preds = [pred]
            if isinstance(head_name, (list, tuple)):
                if len(head_name) != 1:
                    raise ValueError(f"one prediction but head_name={head_name!r}")
                head_name = head_name[0]
            heads = [head_name or "ctr"]
            labels = [label]
        if pred is None or any(p is None for p in preds):
            raise ValueError(f"model_fn returned no prediction for heads {heads}")
        if mode != ModeKeys.PREDICT and (len(labels) != len(preds) or any(lb is None for lb in labels)):
            raise ValueError(f"heads {heads} need one label each, got {label!r}")
        if len(set(heads)) != len(heads):
            raise ValueError(f"head names must be unique, got {heads}")
        return heads, preds, labels

    @abc.abstractmethod
    def input_fn(self, mode: str) -> tf.data.Dataset:
        ...

    @abc.abstractmethod
    def model_fn(self, features: dict[str, Any], mode: str):
        ...

    def serving_input_receiver_fn(self):
        return None


class MonolithModel(MonolithBaseModel):
    @classmethod
    def params(cls) -> Params:
        p = super().params()
        p.define("feature_list", None, "path of a feature list (unused: features are named by the input_fn)")
        return p

    def _get_fs_conf(self, shared_name: str, slot, occurrence_threshold, expire_time) -> FeatureSlotConfig:
        return FeatureSlotConfig(name=shared_name, has_bias=False, slot_id=slot,
                                 occurrence_threshold=occurrence_threshold, expire_time=expire_time)

    def create_embedding_feature_column(self, feature_name, occurrence_threshold=None, expire_time=36500,
                                        max_seq_length=0, shared_name=None, combiner=None) -> FeatureColumn:
        """Declare a ragged id feature read through a table (its own, or `shared_name`'s)."""
        combiner = combiners_mod.from_name(combiner, max_seq_length)
        slot = feature_name if isinstance(feature_name, int) else None
        feature_name = str(feature_name)
        if feature_name in self.fc_dict:
            return self.fc_dict[feature_name]
        if occurrence_threshold is None:
            occurrence_threshold = self.default_occurrence_threshold
        if shared_name is None:
            shared_name = self._share_slot_mapping.get(feature_name)
        table_name = feature_name
        if shared_name is not None:
            if not isinstance(shared_name, str) or not shared_name:
                raise ValueError(f"shared_name of feature {feature_name!r} must be a non-empty string, "
                                 f"got {shared_name!r}")
            self._share_slot_mapping[feature_name] = shared_name
            table_name = shared_name
            if shared_name in self.fc_dict and shared_name not in self.fs_dict:
                self.fs_dict[shared_name] = self.fc_dict[shared_name].slot
        if table_name in self.fs_dict:
            fs = self.fs_dict[table_name]
            if fs.config.occurrence_threshold != occurrence_threshold or fs.config.expire_time != expire_time:
                raise ValueError(f"feature {feature_name!r} shares table {table_name!r} but asks for "
                                 f"occurrence_threshold={occurrence_threshold}, expire_time={expire_time}; the table "
                                 f"has {fs.config.occurrence_threshold}, {fs.config.expire_time}")
        else:
            fs = self.ctx.create_feature_slot(self._get_fs_conf(table_name, slot, occurrence_threshold, expire_time))
            self.fs_dict[table_name] = fs
        self._occurrence_threshold[table_name] = occurrence_threshold
        fc = FeatureColumn(fs, feature_name, combiner)
        self.fc_dict[feature_name] = fc
        recorder = dump_recording.current()
        if recorder is not None:
            recorder.feature_column(fc, shared_name)
        return fc

    def _embedding_slice_lookup(self, fc, slice_name, slice_dim, initializer, optimizer, compressor,
                                learning_rate_fn, slice_list) -> tf.Tensor:
        if self.is_fused_layout():
            raise ValueError("embedding slice lookups are not available with a layout_factory (fused layout)")
        if isinstance(fc, FeatureColumn):
            feature_name = fc.feature_name
        else:
            feature_name = str(fc)
            if feature_name not in self.fc_dict:
                raise ValueError(f"feature {feature_name!r} has no embedding feature column; call "
                                 f"create_embedding_feature_column({feature_name!r}) first "
                                 f"(known: {sorted(self.fc_dict)})")
            fc = self.fc_dict[feature_name]
        table = fc.slot.name
        slices = self.slice_dict.setdefault(table, {})
        fc_slice = slices.get(slice_name)
        if fc_slice is None:
            fc_slice = fc.slot.add_feature_slice(slice_dim, initializer, optimizer, compressor, learning_rate_fn,
                                                 name=slice_name)
            slices[slice_name] = fc_slice
        elif fc_slice.dim != slice_dim:
            raise ValueError(f"slice {slice_name!r} of table {table!r} has dim {fc_slice.dim}; feature "
                             f"{feature_name!r} asked for {slice_dim}")
        slice_list.append((fc.feature_name, fc_slice))
        recorder = dump_recording.current()
        if recorder is not None:
            recorder.slice_lookup(fc.feature_name, fc_slice, learning_rate_fn)
        return fc.embedding_lookup(fc_slice)

    def lookup_embedding_slice(self, features, slice_name, slice_dim=None, initializer=None, optimizer=None,
                               compressor=None, learning_rate_fn=None, group_out_type="add_n", out_type=None):
        """Look up slice `slice_name` of each feature. `features` forms: {name: dim}; [names] + slice_dim;
        [[names], ...] groups + slice_dim (pooled by `group_out_type`); [(name, dim), ...]."""
        keys = sorted(features) if isinstance(features, dict) else sorted(str(f) for f in features)
        layout_name = f"{slice_name}_{hashlib.md5(','.join(keys).encode()).hexdigest()}"
        is_seq = isinstance(features, (list, tuple))
        if self.is_fused_layout():
            if is_seq and isinstance(slice_dim, int) and any(isinstance(f, (list, tuple)) for f in features):
                raise ValueError("group pool is not support when fused_layout")
            return self.ctx.layout_factory.get_layout(layout_name)
        args = (initializer, optimizer, compressor, learning_rate_fn)
        slice_list: list = []

        def one(feature, dim):
            return self._embedding_slice_lookup(feature, slice_name, dim, *args, slice_list)

        embeddings = _slice_embeddings(features, slice_dim, group_out_type, one)
        if out_type is None:
            self.add_layout(layout_name, slice_list, None, [e.shape for e in embeddings])
            return embeddings
        out = _combine(embeddings, out_type)
        self.add_layout(layout_name, slice_list, out_type, [out.shape])
        return out

    def share_slot(self, features=None, share_meta=None, variant_type="example", suffix="share"):
        """Read feature `name` also as `name_<suffix>` (or in place): both then share one table."""
        share_meta = share_meta or {}
        out = dict(features) if isinstance(features, dict) else None
        for name, (inplace, _slot) in share_meta.items():
            shared = name if inplace else f"{name}_{suffix}"
            if not inplace:
                self._share_slot_mapping[shared] = name
            if out is not None:
                if name not in out:
                    raise KeyError(f"share_slot: feature {name!r} not in features {sorted(out)}")
                out[shared] = out[name]
        if out is not None:
            return out
        return lambda tensors: {**tensors, **{f"{n}_{suffix}": tensors[n] for n, (inp, _) in share_meta.items()
                                               if not inp}}
