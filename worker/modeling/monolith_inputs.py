"""Parse Monolith's `Instance`, `Example` and `ExampleBatch` protos inside a TensorFlow graph.

Only core ops: `tf.io.decode_proto` with the protos' descriptors embedded in the graph, so a SavedModel
whose serving input uses these parsers needs no custom op and no project code to run (the original
needed its own C++ parsing kernels inside TF Serving). Nested messages come back serialized and are
decoded again, level by level.

Each parser returns {feature: ragged int64 [batch, None] ids} for sparse features (fids as the signed
view of their 64 bits) and {feature: [batch, dim] tensor} for dense ones (zeros when absent), and
records a `ParserArgs` while a `recording()` is active, so an exporter knows what requests to generate
for warmup.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import tensorflow as tf
from google.protobuf import descriptor_pb2

from protos import example_pb2, proto_parser_pb2
from services.sample_gen import DenseFeature, ParserArgs
from worker.modeling.thread_scope import ThreadScope

_FIXED64_SHIFT_V1 = 54
_records: ThreadScope[list[ParserArgs]] = ThreadScope()


def _descriptor_source() -> bytes:
    files = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(fd) -> None:
        if fd.name in seen:
            return
        for dep in fd.dependencies:
            add(dep)
        seen.add(fd.name)
        fd.CopyToProto(files.file.add())

    add(example_pb2.DESCRIPTOR)
    add(proto_parser_pb2.DESCRIPTOR)
    return b"bytes://" + files.SerializeToString()


DESCRIPTOR_SOURCE = _descriptor_source()


def recording() -> contextlib.AbstractContextManager[list[ParserArgs]]:
    """Collect the `ParserArgs` of every parser called inside (the exporter's view of the serving input)."""
    return _records.scope([])


def record(args: ParserArgs) -> None:
    """Note a parser call in the active `recording()` (if any)."""
    records = _records.current()
    if records is not None:
        records.append(args)


def _dense_specs(dense_features) -> list[DenseFeature]:
    out = []
    for d in dense_features or ():
        if isinstance(d, DenseFeature):
            out.append(d)
        elif isinstance(d, str):
            out.append(DenseFeature(d))
        else:
            name, dim = d
            out.append(DenseFeature(name, "float32", int(dim)))
    for d in out:
        if d.dtype not in ("float32", "float64", "int64"):
            raise ValueError(f"dense feature {d.name!r}: dtype must be float32, float64 or int64, got {d.dtype!r}")
    return out


def _decode(data: tf.Tensor, message: str, fields: Sequence[str], dtypes: Sequence[tf.DType]):
    """decode_proto over `data` ([n] serialized messages); an empty message is appended and dropped again
    because the op rejects an empty batch."""
    data = tf.concat([data, [""]], axis=0)
    sizes, values = tf.io.decode_proto(data, message, list(fields), list(dtypes), descriptor_source=DESCRIPTOR_SOURCE)
    return [tf.cast(sizes[:-1, i], tf.int64) for i in range(len(fields))], [v[:-1] for v in values]


def _ragged(values: tf.Tensor, lengths: tf.Tensor) -> tf.RaggedTensor:
    return tf.RaggedTensor.from_tensor(values, lengths=lengths)


def _first(values: tf.Tensor, default) -> tf.Tensor:
    """The first value per row of a decoded scalar field (its default when absent)."""
    n = tf.shape(values)[0]
    pad = tf.fill([n, 1], tf.constant(default, values.dtype))
    return tf.concat([values, pad], axis=1)[:, 0]


def _signed(ids: tf.RaggedTensor) -> tf.RaggedTensor:
    return ids.with_flat_values(tf.bitcast(ids.flat_values, tf.int64))


def _decode_list(serialized: tf.Tensor, lengths: tf.Tensor, message: str, dtype: tf.DType) -> tf.RaggedTensor:
    """Decode a list message (field `value`) for each of `serialized` ([n, max] padded with empties)."""
    flat = _ragged(serialized, lengths)
    (sizes,), (values,) = _decode(flat.flat_values, message, ["value"], [dtype])
    return flat.with_flat_values(_ragged(values, sizes)).merge_dims(1, 2)


# monolith.io.proto.Feature fields a parser reads, with their list message and value dtype
_EXAMPLE_LISTS = {
    "fid_v1_list": ("monolith.io.proto.FidList", tf.uint64),
    "fid_v2_list": ("monolith.io.proto.FidList", tf.uint64),
    "float_list": ("monolith.io.proto.FloatList", tf.float32),
    "double_list": ("monolith.io.proto.DoubleList", tf.float64),
    "int64_list": ("monolith.io.proto.Int64List", tf.int64),
}


def _example_features(serialized_features: tf.Tensor) -> dict[str, tf.RaggedTensor]:
    """Per serialized `monolith.io.proto.Feature`: its ids (v1 and v2 lists) and its dense values."""
    sizes, values = _decode(serialized_features, "monolith.io.proto.Feature", list(_EXAMPLE_LISTS),
                            [tf.string] * len(_EXAMPLE_LISTS))
    lists = {field: _decode_list(v, s, message, dtype)
             for (field, (message, dtype)), s, v in zip(_EXAMPLE_LISTS.items(), sizes, values)}
    ids = tf.concat([lists["fid_v1_list"], lists["fid_v2_list"]], axis=1)
    dense = tf.concat([lists["float_list"], tf.cast(lists["double_list"], tf.float32),
                       tf.cast(lists["int64_list"], tf.float32)], axis=1)
    return {"ids": _signed(ids), "dense": dense, "int64": lists["int64_list"]}


def _select(names: tf.Tensor, owner: tf.Tensor, batch: tf.Tensor, per_feature: tf.RaggedTensor,
            name: str) -> tf.RaggedTensor:
    """Concatenate, per sample, the values of the named features called `name` ([batch, None])."""
    sel = tf.reshape(tf.where(tf.equal(names, name)), [-1])
    picked = tf.gather(per_feature, sel)
    counts = tf.math.unsorted_segment_sum(picked.row_lengths(), tf.gather(owner, sel), batch)
    return tf.RaggedTensor.from_row_lengths(picked.flat_values, counts)


def _to_dense(values: tf.RaggedTensor, dim: int, dtype: tf.DType) -> tf.Tensor:
    return tf.ensure_shape(tf.cast(values[:, :dim].to_tensor(default_value=0, shape=[None, dim]), dtype), [None, dim])


def _named_outputs(names, owner, batch, per_feature: dict, sparse: Iterable[str], dense: list[DenseFeature]) -> dict:
    out = {}
    for name in sparse:
        out[name] = _select(names, owner, batch, per_feature["ids"], name)
    for d in dense:
        source = per_feature["int64"] if d.dtype == "int64" else per_feature["dense"]
        out[d.name] = _to_dense(_select(names, owner, batch, source, d.name), d.shape, tf.as_dtype(d.dtype))
    return out


def parse_examples(serialized: tf.Tensor, sparse_features: Sequence[str] = (), dense_features=(),
                   with_label: bool = False) -> dict[str, tf.Tensor]:
    """A batch of serialized `monolith.io.proto.Example`s -> features (and `label`: the first label, or 0)."""
    dense = _dense_specs(dense_features)
    record(ParserArgs("example", sparse_features=list(sparse_features), dense_features=dense))
    serialized = tf.reshape(serialized, [-1])
    batch = tf.size(serialized, out_type=tf.int64)
    (nf_sizes, label_sizes), (named, labels) = _decode(serialized, "monolith.io.proto.Example",
                                                       ["named_feature", "label"], [tf.string, tf.float32])
    named = _ragged(named, nf_sizes)
    _, (names, features) = _decode(named.flat_values, "monolith.io.proto.NamedFeature", ["name", "feature"],
                                   [tf.string, tf.string])
    per_feature = _example_features(_first(features, ""))
    out = _named_outputs(_first(names, ""), named.value_rowids(), batch, per_feature, sparse_features, dense)
    if with_label:
        out["label"] = tf.where(label_sizes > 0, _first(labels, 0.0), 0.0)
    return out


def parse_instances(serialized: tf.Tensor, fidv1_features: Sequence[int] = (), fidv2_features: Sequence[str] = (),
                    dense_features=(), with_label: bool = False) -> dict[str, tf.Tensor]:
    """A batch of serialized `parser.proto.Instance`s -> `slot_<n>` features from the v1 fids of the given
    slots, named (v2) fid features and dense features from `Instance.feature`."""
    dense = _dense_specs(dense_features)
    record(ParserArgs("instance", fidv1_features=[int(s) for s in fidv1_features],
                       sparse_features=list(fidv2_features), dense_features=dense))
    serialized = tf.reshape(serialized, [-1])
    batch = tf.size(serialized, out_type=tf.int64)
    (fid_sizes, feat_sizes, label_sizes), (fids, feats, labels) = _decode(
        serialized, "parser.proto.Instance", ["fid", "feature", "label"], [tf.uint64, tf.string, tf.float32])
    out: dict[str, tf.Tensor] = {}
    fids = _ragged(fids, fid_sizes)
    slots = tf.bitwise.right_shift(fids, tf.constant(_FIXED64_SHIFT_V1, tf.uint64))
    for slot in fidv1_features:
        out[f"slot_{int(slot)}"] = _signed(tf.ragged.boolean_mask(fids, tf.equal(slots, tf.cast(slot, tf.uint64))))
    feats = _ragged(feats, feat_sizes)
    (fid2_sizes, float_sizes, int_sizes), (names, fid2, floats, ints) = (lambda s, v: (s[1:], v))(*_decode(
        feats.flat_values, "idl.matrix.proto.Feature", ["name", "fid", "float_value", "int64_value"],
        [tf.string, tf.uint64, tf.float32, tf.int64]))
    per_feature = {"ids": _signed(_ragged(fid2, fid2_sizes)),
                   "dense": tf.concat([_ragged(floats, float_sizes), tf.cast(_ragged(ints, int_sizes), tf.float32)], 1),
                   "int64": _ragged(ints, int_sizes)}
    out.update(_named_outputs(_first(names, ""), feats.value_rowids(), batch, per_feature, fidv2_features, dense))
    if with_label:
        out["label"] = tf.where(label_sizes > 0, _first(labels, 0.0), 0.0)
    return out


def parse_example_batch(serialized: tf.Tensor, sparse_features: Sequence[str] = (), dense_features=(),
                        with_label: bool = False) -> dict[str, tf.Tensor]:
    """One serialized `monolith.io.proto.ExampleBatch` (a scalar or a [1] vector) -> features of its rows.

    Each feature list holds one Feature per row, or one for every row when SHARED; labels come from
    the reserved `__LABEL__` list."""
    dense = _dense_specs(dense_features)
    record(ParserArgs("example_batch", sparse_features=list(sparse_features), dense_features=dense))
    serialized = tf.reshape(serialized, [-1])[:1]
    (list_sizes, _), (lists, batch_size) = _decode(serialized, "monolith.io.proto.ExampleBatch",
                                                   ["named_feature_list", "batch_size"], [tf.string, tf.int32])
    batch = tf.cast(_first(batch_size, 0)[0], tf.int64)
    lists = _ragged(lists, list_sizes).flat_values
    (_, row_sizes), (names, rows) = _decode(lists, "monolith.io.proto.NamedFeatureList", ["name", "feature"],
                                            [tf.string, tf.string])
    rows = _ragged(rows, row_sizes)                       # [lists, rows] serialized Feature
    per_feature = {k: rows.with_flat_values(v) for k, v in _example_features(rows.flat_values).items()}
    names = _first(names, "")

    def column(source: tf.RaggedTensor, name: str) -> tf.RaggedTensor:
        picked = tf.gather(source, tf.reshape(tf.where(tf.equal(names, name)), [-1])[:1]).merge_dims(0, 1)
        n = picked.nrows()
        check = tf.debugging.Assert(tf.logical_or(tf.logical_or(n <= 1, tf.equal(n, batch)), False),
                                    [f"ExampleBatch feature list {name!r} must have 1 (shared) or batch_size rows, has",
                                     n, "batch_size", batch])
        with tf.control_dependencies([check]):
            padded = tf.concat([tf.RaggedTensor.from_row_lengths(tf.zeros([0], source.dtype),
                                                                 tf.zeros([1], tf.int64)), picked], axis=0)
        index = tf.where(n > 0, tf.minimum(tf.range(batch), n - 1) + 1, tf.zeros([batch], tf.int64))
        return tf.gather(padded, index)

    out = {name: column(per_feature["ids"], name) for name in sparse_features}
    for d in dense:
        source = per_feature["int64"] if d.dtype == "int64" else per_feature["dense"]
        out[d.name] = _to_dense(column(source, d.name), d.shape, tf.as_dtype(d.dtype))
    if with_label:
        out["label"] = _to_dense(column(per_feature["dense"], "__LABEL__"), 1, tf.float32)[:, 0]
    return out
