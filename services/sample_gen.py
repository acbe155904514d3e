"""Random Monolith samples (`Instance`, `Example`, `ExampleBatch`, `LineId`) for warmup and demos.

`ParserArgs` describes what a serving input parses (the in-graph parsers record it while a model's
serving input is traced); the generators fill exactly those features, seeded, so a warmup file or a
demo request is reproducible. Feature ids are random signatures in the feature's slot, so they are
mostly unknown to the tables and read as zeros, which is all a warmup needs.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from protos import example_pb2, line_id_pb2, proto_parser_pb2
from services import fids as F
from services.pb_framing import FramingFlags, PBWriter

VARIANT_TYPES = ("instance", "example", "example_batch")
INPUT_NAMES = {"instance": "instances", "example": "examples", "example_batch": "example_batch"}
USER_SLOT, ITEM_SLOT = 1, 200


@dataclass
class DenseFeature:
    name: str
    dtype: str = "float32"   # float32 | float64 | int64
    shape: int = 1


@dataclass
class ParserArgs:
    """What one serving input carries: its proto kind, its sparse and dense features, the signatures."""

    variant_type: str = "example"
    fidv1_features: list[int] = field(default_factory=list)      # Instance fid v1 slots -> "slot_<n>"
    sparse_features: list[str] = field(default_factory=list)     # named fid (v2) lists
    dense_features: list[DenseFeature] = field(default_factory=list)
    input_name: str | None = None
    batch_size: int = 64
    signature_name: list[str] = field(default_factory=lambda: ["serving_default"])
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.variant_type not in VARIANT_TYPES:
            raise ValueError(f"variant_type must be one of {VARIANT_TYPES}, got {self.variant_type!r}")
        if self.input_name is None:
            self.input_name = INPUT_NAMES[self.variant_type]
        if "serving_default" not in self.signature_name:
            self.signature_name = ["serving_default", *self.signature_name]
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {self.batch_size}")


def _slot_of(name: str) -> int | None:
    for prefix in ("slot_", "fc_slot_"):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return int(name[len(prefix):])
    return None


def _sparse_fids(args: ParserArgs, name: str, rng: np.random.Generator) -> list[int]:
    slot = _slot_of(name)
    if slot is None or not 0 < slot <= F.MAX_SLOT_V2:
        slot = 2 + zlib.crc32(name.encode()) % (F.MAX_SLOT_V2 - 2)  # a stable slot per feature name
    if slot in (USER_SLOT, ITEM_SLOT):
        return F.gen_fids_v2(slot, 1, rng)
    if args.drop_rate and rng.random() < args.drop_rate:
        return []
    return F.gen_fids_v2(slot, int(rng.integers(1, 6)), rng)


def _dense_values(feature: DenseFeature, rng: np.random.Generator) -> list:
    if feature.dtype == "int64":
        return rng.integers(0, 100, size=feature.shape).tolist()
    return rng.random(feature.shape).tolist()


def fill_line_id(line_id: line_id_pb2.LineId, rng: np.random.Generator, actions: list[int] | None = None) -> None:
    line_id.uid = (USER_SLOT << 48) | int(rng.integers(0, 1 << 48))
    line_id.item_id = (ITEM_SLOT << 48) | int(rng.integers(0, 1 << 48))
    line_id.req_time = int(time.time())
    line_id.sample_rate = 1.0
    line_id.actions.extend(actions if actions is not None else [int(rng.integers(0, 11))])


def gen_instance(args: ParserArgs, rng: np.random.Generator) -> proto_parser_pb2.Instance:
    inst = proto_parser_pb2.Instance()
    for slot in args.fidv1_features:
        n = 1 if slot in (USER_SLOT, ITEM_SLOT) else int(rng.integers(1, 6))
        inst.fid.extend(F.gen_fids_v1(slot, n, rng))
    for name in args.sparse_features:
        inst.feature.add(name=name, fid=_sparse_fids(args, name, rng))
    for dense in args.dense_features:
        feat = inst.feature.add(name=dense.name)
        values = _dense_values(dense, rng)
        (feat.int64_value if dense.dtype == "int64" else feat.float_value).extend(values)
    inst.label.append(float(rng.integers(0, 2)))
    fill_line_id(inst.line_id, rng)
    return inst


def _fill_example_feature(feature: example_pb2.Feature, values: list, kind: str) -> None:
    getattr(feature, kind).value.extend(values)


def _dense_kind(dense: DenseFeature) -> str:
    return {"int64": "int64_list", "float64": "double_list"}.get(dense.dtype, "float_list")


def gen_example(args: ParserArgs, rng: np.random.Generator) -> example_pb2.Example:
    ex = example_pb2.Example()
    for slot in args.fidv1_features:
        nf = ex.named_feature.add(name=f"slot_{slot}")
        nf.feature.fid_v1_list.value.extend(F.gen_fids_v1(slot, 1 if slot in (USER_SLOT, ITEM_SLOT) else 3, rng))
    for name in args.sparse_features:
        ex.named_feature.add(name=name).feature.fid_v2_list.value.extend(_sparse_fids(args, name, rng))
    for dense in args.dense_features:
        _fill_example_feature(ex.named_feature.add(name=dense.name).feature, _dense_values(dense, rng),
                              _dense_kind(dense))
    ex.label.append(float(rng.integers(0, 2)))
    fill_line_id(ex.line_id, rng)
    return ex


def gen_example_batch(args: ParserArgs, rng: np.random.Generator, batch_size: int | None = None
                      ) -> example_pb2.ExampleBatch:
    n = batch_size or args.batch_size
    batch = example_pb2.ExampleBatch(batch_size=n)
    for name in args.sparse_features + [f"slot_{s}" for s in args.fidv1_features]:
        nfl = batch.named_feature_list.add(name=name)
        for _ in range(n):
            nfl.feature.add().fid_v2_list.value.extend(_sparse_fids(args, name, rng))
    for dense in args.dense_features:
        nfl = batch.named_feature_list.add(name=dense.name)
        for _ in range(n):
            _fill_example_feature(nfl.feature.add(), _dense_values(dense, rng), _dense_kind(dense))
    line_ids = batch.named_feature_list.add(name="__LINE_ID__")
    labels = batch.named_feature_list.add(name="__LABEL__")
    for _ in range(n):
        lid = line_id_pb2.LineId()
        fill_line_id(lid, rng)
        line_ids.feature.add().bytes_list.value.append(lid.SerializeToString())
        labels.feature.add().float_list.value.append(float(rng.integers(0, 2)))
    return batch


def gen_serialized(args: ParserArgs, rng: np.random.Generator, batch_size: int | None = None) -> list[bytes]:
    """One request's worth of serialized inputs: `batch_size` instances/examples, or one ExampleBatch."""
    n = batch_size or args.batch_size
    if args.variant_type == "example_batch":
        return [gen_example_batch(args, rng, n).SerializeToString()]
    gen = gen_instance if args.variant_type == "instance" else gen_example
    return [gen(args, rng).SerializeToString() for _ in range(n)]


def gen_random_data_file(path: str, args: ParserArgs, num_batch: int, seed: int = 0,
                         flags: FramingFlags = FramingFlags(), source: str = "") -> int:
    """A framed binary file of `num_batch` batches of random records; returns the number of records."""
    rng = np.random.default_rng(seed)
    count = 0
    with open(path, "wb") as fh:
        writer = PBWriter(fh, flags)
        for _ in range(num_batch):
            for payload in gen_serialized(args, rng):
                writer.write(payload, source)
                count += 1
    return count
