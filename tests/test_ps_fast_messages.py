"""The zero-copy encoders/decoders write and read exactly what protobuf's generated classes do."""
import numpy as np
import pytest
from google.protobuf.message import DecodeError

from protos import ps_pb2
from ps.wire.fast_messages import (
    APPLY_CLAIM_LIMIT,
    APPLY_GLOBAL_STEP,
    APPLY_UPDATE_TIME,
    decode_lookup_response,
    decode_updates,
    encode_lookup_response,
    encode_updates,
)

RNG = np.random.default_rng(0)


def test_lookup_response_encoding_parses_with_protobuf():
    rows32 = RNG.normal(size=(300, 16)).astype(np.float32)
    rows16 = RNG.normal(size=(5, 3)).astype(np.float16)
    empty = np.zeros((0, 4), np.float32)
    data = encode_lookup_response([("user", rows32, ps_pb2.FLOAT32, 16), ("ü/item", rows16, ps_pb2.FLOAT16, 3),
                                   ("e", empty, ps_pb2.FLOAT32, 4)],
                                  [("tower/w", (3, 300), rows32.reshape(-1)[:900].reshape(3, 300)),
                                   ("s", (), rows32[0, :1])])
    msg = ps_pb2.LookupResponse.FromString(data)
    assert [(d.name, tuple(d.shape)) for d in msg.dense] == [("tower/w", (3, 300)), ("s", ())]
    assert msg.dense[0].values == rows32.reshape(-1)[:900].tobytes()
    assert [(t.table, t.dtype, t.dim) for t in msg.tables] == [("user", 0, 16), ("ü/item", 1, 3), ("e", 0, 4)]
    assert msg.tables[0].values == rows32.tobytes() and msg.tables[1].values == rows16.tobytes()
    assert msg.tables[2].values == b""
    assert data == msg.SerializeToString()


def test_lookup_response_decoding_reads_protobuf_output():
    rows = RNG.normal(size=(70, 8)).astype(np.float32)
    msg = ps_pb2.LookupResponse()
    msg.tables.add(table="a", values=rows.tobytes(), dtype=ps_pb2.FLOAT32, dim=8)
    msg.tables.add(table="b", values=b"", dtype=ps_pb2.FLOAT16, dim=2)
    msg.dense.add(name="w", shape=[7, 10], values=rows.reshape(-1)[:70].tobytes())
    got = decode_lookup_response(msg.SerializeToString())
    assert [(t.table, t.dtype, t.dim) for t in got.tables] == [("a", 0, 8), ("b", 1, 2)]
    np.testing.assert_array_equal(np.frombuffer(got.tables[0].values, np.float32).reshape(70, 8), rows)
    assert [(d.name, d.shape) for d in got.dense] == [("w", (7, 10))]
    np.testing.assert_array_equal(np.frombuffer(got.dense[0].values, np.float32), rows.reshape(-1)[:70])


def _updates():
    return [("user", RNG.integers(-2**62, 2**62, size=40), RNG.normal(size=(40, 8)).astype(np.float32), [0.1, 2.5]),
            ("item", np.array([-1], np.int64), np.ones((1, 4), np.float32), None)]


@pytest.mark.parametrize("global_step", [0, 7, -3, 2**40])
def test_update_encoding_parses_with_protobuf(global_step):
    updates = _updates()
    data = encode_updates(updates, {APPLY_GLOBAL_STEP: global_step, APPLY_UPDATE_TIME: 86400})
    msg = ps_pb2.ApplyGradientsRequest.FromString(data)
    assert (msg.global_step, msg.update_time) == (global_step, 86400)
    for t, (name, ids, values, lrs) in zip(msg.tables, updates):
        assert t.table == name and t.ids == ids.astype("<i8").tobytes() and t.values == values.tobytes()
        assert list(t.learning_rates) == pytest.approx(lrs or [])
    assert data == msg.SerializeToString()


def test_a_step_push_with_dense_gradients_and_a_claim_round_trips_through_protobuf():
    dense = [("tower/w", RNG.normal(size=(3, 2)).astype(np.float32)), ("b", np.zeros(0, np.float32))]
    data = encode_updates(_updates(), {APPLY_GLOBAL_STEP: 9, APPLY_CLAIM_LIMIT: 2**62}, dense)
    msg = ps_pb2.ApplyGradientsRequest.FromString(data)
    assert (msg.global_step, msg.claim_limit) == (9, 2**62)
    assert [(d.name, d.values) for d in msg.dense] == [(n, g.tobytes()) for n, g in dense]
    assert data == msg.SerializeToString()
    view = decode_updates(data, "ApplyGradientsRequest")
    assert [(n, bytes(v)) for n, v in view.dense] == [(n, g.tobytes()) for n, g in dense]
    assert view.scalars[APPLY_CLAIM_LIMIT] == 2**62 and len(view.tables) == 2
    assert decode_updates(data, "UpdateRequest").dense == []  # not a field of Assign's request


def test_update_decoding_reads_protobuf_output_and_skips_unknown_fields():
    msg = ps_pb2.ApplyGradientsRequest(global_step=-5, update_time=12)
    for name, ids, values, lrs in _updates():
        msg.tables.add(table=name, ids=ids.tobytes(), values=values.tobytes(), learning_rates=lrs or [])
    data = msg.SerializeToString() + b"\x48\x01" + b"\x52\x02hi"  # unknown fields 9 (varint) and 10 (bytes)
    view = decode_updates(data, "ApplyGradientsRequest")
    assert view.scalars[APPLY_GLOBAL_STEP] == -5 and view.scalars[APPLY_UPDATE_TIME] == 12
    for got, t in zip(view.tables, msg.tables):
        assert (got.table, bytes(got.ids), bytes(got.values)) == (t.table, t.ids, t.values)
        assert got.learning_rates == pytest.approx(list(t.learning_rates))


def test_every_truncation_is_refused_or_parses_like_protobuf():
    msg = ps_pb2.ApplyGradientsRequest(global_step=3)
    msg.tables.add(table="t", ids=np.arange(3, dtype="<i8").tobytes(), values=np.ones(6, "<f4").tobytes(),
                   learning_rates=[0.5])
    data = msg.SerializeToString()
    for cut in range(len(data)):
        prefix = data[:cut]
        try:
            reference = ps_pb2.ApplyGradientsRequest.FromString(prefix)
        except DecodeError:
            with pytest.raises(ValueError, match="malformed ApplyGradientsRequest"):
                decode_updates(prefix, "ApplyGradientsRequest")
            continue
        view = decode_updates(prefix, "ApplyGradientsRequest")
        assert [bytes(t.values) for t in view.tables] == [t.values for t in reference.tables]
    with pytest.raises(ValueError, match="malformed"):
        decode_updates(b"\xff\xfe garbage", "ApplyGradientsRequest")
