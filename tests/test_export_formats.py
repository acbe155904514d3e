"""Monolith's data formats: fid encodings, the framed record stream, and the in-graph proto parsers
(checked against protobuf's own Python parsing of the same bytes)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf

from protos import example_pb2, proto_parser_pb2
from services import fids as F
from services.pb_framing import FramingError, FramingFlags, PBReader, frame, lg_header, sort_header
from services.sample_gen import DenseFeature, ParserArgs, gen_example, gen_example_batch, gen_instance
from worker.modeling.monolith_inputs import parse_example_batch, parse_examples, parse_instances, recording


def test_fid_encodings_match_the_documented_vectors():
    assert F.make_fid_v1(1, 100) == 18014398509482084
    assert F.make_fid_v2(1, 100) == 281474976710756
    assert F.as_int64([F.make_fid_v1(512, 1)])[0] < 0          # v1 slots >= 512 are negative int64s
    assert F.slot_v1(F.make_fid_v1(600, 5)) == 600 and F.slot_v2(F.make_fid_v2(32767, 5)) == 32767
    assert F.v1_to_v2(F.make_fid_v1(3, (1 << 50) | 7)) == F.make_fid_v2(3, 7)   # v1 bits 48..53 are lost
    assert np.array_equal(F.slot_v2(F.v1_to_v2(np.array(F.gen_fids_v1(9, 5), np.uint64))), [9] * 5)
    for bad in (-1, 1024):
        with pytest.raises(ValueError, match="slot"):
            F.make_fid_v1(bad, 0)
    with pytest.raises(ValueError, match="slot"):
        F.make_fid_v2(32768, 0)
    assert F.make_fid_v2(32767, -1) >> 63 == 0                  # bit 63 stays zero


@pytest.mark.parametrize("flags", [FramingFlags(), FramingFlags(has_sort_id=False), FramingFlags(kafka_dump=True),
                                   FramingFlags(kafka_dump_prefix=True), FramingFlags(lagrangex_header=True)])
def test_framing_round_trip(flags):
    payloads = [b"", b"a", bytes(range(200))]
    assert [r.payload for r in PBReader(io.BytesIO(frame(payloads, flags)), flags)] == payloads


def test_lagrange_header_and_sort_headers():
    assert lg_header("abc") == bytes([0, 0x62, 0x78, 0x01, 0, 0, 0, 0]) and lg_header("") == bytes(8)
    data = lg_header("abc") + (3).to_bytes(8, "little") + b"xyz"
    (record,) = PBReader(io.BytesIO(data), FramingFlags(lagrangex_header=True))
    assert record.data_source_key == 24666624 and record.pb_type == 0 and record.payload == b"xyz"
    assert [len(sort_header(True, kd, kp)) for kd, kp in ((False, False), (True, False), (False, True))] == [8, 16, 24]
    assert sort_header(False, False, False) == b""
    with pytest.raises(ValueError):
        sort_header(False, True, False)
    # a non-zero kafka-dump prefix word is the sort id's size
    data = (2).to_bytes(8, "little") + b"ID" + (1).to_bytes(8, "little") + b"z"
    assert [r.payload for r in PBReader(io.BytesIO(data), FramingFlags(kafka_dump_prefix=True))] == [b"z"]


def test_truncated_and_corrupt_streams_name_the_byte_offset():
    good = frame([b"hello", b"world!"])          # 8 (sort id size) + 8 (length) + payload per record
    with pytest.raises(FramingError, match="byte offset 37: truncated record payload of 6 bytes") as exc:
        list(PBReader(io.BytesIO(good[:-3])))
    assert exc.value.offset == 37
    with pytest.raises(FramingError, match="byte offset 29: truncated record length"):
        list(PBReader(io.BytesIO(good[:29 + 4])))
    dead = bytes(8) + (0xFEFEFEFE).to_bytes(8, "little")
    with pytest.raises(FramingError, match="byte offset 8: .*DEADBEEF"):
        list(PBReader(io.BytesIO(dead)))
    huge = bytes(8) + (1 << 40).to_bytes(8, "little")
    with pytest.raises(FramingError, match="byte offset 8: record length .* exceeds"):
        list(PBReader(io.BytesIO(huge)))
    assert list(PBReader(io.BytesIO(b""))) == []


def _signed(values) -> list[int]:
    return F.as_int64(np.array(list(values), np.uint64)).tolist()


def test_examples_parse_in_graph_like_protobuf():
    rng = np.random.default_rng(1)
    args = ParserArgs("example", sparse_features=["uid", "genres"], dense_features=[DenseFeature("d", "float32", 2)])
    examples = [gen_example(args, rng) for _ in range(5)]
    examples[2].named_feature.add(name="genres").feature.fid_v2_list.value.extend([1, 2])  # split over two entries
    with recording() as records:
        out = parse_examples(tf.constant([e.SerializeToString() for e in examples]), ["uid", "genres", "absent"],
                             [("d", 2)], with_label=True)
    assert records[0].variant_type == "example" and records[0].sparse_features == ["uid", "genres", "absent"]
    for i, ex in enumerate(examples):
        by_name: dict[str, list] = {}
        for nf in ex.named_feature:
            kind = nf.feature.WhichOneof("type")
            by_name.setdefault(nf.name, []).extend(getattr(nf.feature, kind).value)
        assert out["uid"][i].numpy().tolist() == _signed(by_name["uid"])
        assert out["genres"][i].numpy().tolist() == _signed(by_name["genres"])
        assert out["absent"][i].numpy().tolist() == []
        np.testing.assert_allclose(out["d"][i].numpy(), np.float32(by_name["d"]))
        assert out["label"][i].numpy() == np.float32(ex.label[0])


def test_instances_parse_in_graph_like_protobuf():
    rng = np.random.default_rng(2)
    args = ParserArgs("instance", fidv1_features=[1, 7, 600], sparse_features=["g"],
                      dense_features=[DenseFeature("w", "float32", 3)])
    instances = [gen_instance(args, rng) for _ in range(4)]
    out = parse_instances(tf.constant([x.SerializeToString() for x in instances]), [1, 7, 600], ["g"], [("w", 3)])
    for i, inst in enumerate(instances):
        for slot in (1, 7, 600):
            assert out[f"slot_{slot}"][i].numpy().tolist() == _signed(f for f in inst.fid if f >> 54 == slot)
        feats = {f.name: f for f in inst.feature}
        assert out["g"][i].numpy().tolist() == _signed(feats["g"].fid)
        np.testing.assert_allclose(out["w"][i].numpy(), np.float32(list(feats["w"].float_value)))
    assert proto_parser_pb2.Instance.FromString(instances[0].SerializeToString()) == instances[0]


def test_example_batch_parses_individual_and_shared_lists():
    rng = np.random.default_rng(3)
    batch = gen_example_batch(ParserArgs("example_batch", sparse_features=["a"], dense_features=[DenseFeature("d")]),
                              rng, 3)
    shared = batch.named_feature_list.add(name="ctx", type=example_pb2.SHARED)
    shared.feature.add().fid_v2_list.value.extend([5, 6])
    out = parse_example_batch(tf.constant(batch.SerializeToString()), ["a", "ctx", "none"], ["d"], with_label=True)
    lists = {nfl.name: nfl for nfl in batch.named_feature_list}
    for i in range(3):
        assert out["a"][i].numpy().tolist() == _signed(lists["a"].feature[i].fid_v2_list.value)
        assert out["ctx"][i].numpy().tolist() == [5, 6] and out["none"][i].numpy().tolist() == []
        assert out["d"][i, 0].numpy() == np.float32(lists["d"].feature[i].float_list.value[0])
        assert out["label"][i].numpy() == np.float32(lists["__LABEL__"].feature[i].float_list.value[0])
    bad = example_pb2.ExampleBatch(batch_size=3)
    nfl = bad.named_feature_list.add(name="a")
    for _ in range(2):                       # 2 rows for a batch of 3, not shared
        nfl.feature.add().fid_v2_list.value.append(1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="must have 1 .shared. or batch_size rows"):
        parse_example_batch(tf.constant(bad.SerializeToString()), ["a"])


def test_undecodable_input_is_a_tensorflow_data_error():
    with pytest.raises((tf.errors.DataLossError, tf.errors.InvalidArgumentError)):
        parse_examples(tf.constant([b"\xff\xff\xff\x01garbage"]), ["uid"])
