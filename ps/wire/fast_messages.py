"""Zero-copy protobuf wire encoding for the messages that carry rows: Lookup replies and updates.

Going through protobuf objects copies every payload three or four times (numpy → bytes → message →
serialized; serialized → message → bytes field), a cost per call of the order of the RPC itself for
multi-MiB replies (docs/design-notes.md). These functions write the same bytes as protobuf
(the tests parse them with the generated classes, and feed generated output to them) but join the
numpy buffers into the message once, and read payloads as memoryview slices of the received bytes.
Only the fields of `protos/ps.proto` that these messages use are understood; unknown fields are
skipped as protobuf does, and anything malformed raises ValueError.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from protos import ps_pb2

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_MASK64 = (1 << 64) - 1


def _varint(value: int) -> bytes:
    value &= _MASK64  # int64 negatives are 10-byte two's complement, as protobuf writes them
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _signed64(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(buf: memoryview, start: int, end: int):
    """(field number, wire type, value): int for varints, memoryview for length-delimited fields."""
    pos = start
    value: int | memoryview
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire_type == _VARINT:
            value, pos = _read_varint(buf, pos, end)
        elif wire_type == _LEN:
            length, pos = _read_varint(buf, pos, end)
            if pos + length > end:
                raise ValueError(f"field {number}: {length} bytes announced, {end - pos} left")
            value, pos = buf[pos:pos + length], pos + length
        elif wire_type in (_I64, _I32):
            size = 8 if wire_type == _I64 else 4
            if pos + size > end:
                raise ValueError(f"field {number}: truncated fixed-width value")
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError(f"field {number}: unsupported wire type {wire_type}")
        yield number, wire_type, value


def _len_field(number: int, chunks: list, size: int) -> list:
    return [_tag(number, _LEN), _varint(size), *chunks]


def _raw(array: np.ndarray, dtype: np.dtype | None = None) -> memoryview:
    """The array's bytes without a copy (one if it is not contiguous or not `dtype`)."""
    return memoryview(np.ascontiguousarray(array, dtype=dtype).reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def _bytes_field(number: int, data: bytes | memoryview) -> list:
    """A proto3 `bytes`/`string` field: omitted when empty, as protobuf does."""
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    return _len_field(number, [data], size) if size else []


def _size(chunks: list) -> int:
    return sum(c.nbytes if isinstance(c, memoryview) else len(c) for c in chunks)


# -- LookupResponse: repeated TableRows tables = 1 {table = 1; values = 2; dtype = 3; dim = 4} ---------
#    repeated DenseValue dense = 2 {name = 1; repeated int64 shape = 2 (packed); values = 3}
def encode_lookup_response(tables: list[tuple[str, np.ndarray, int, int]],
                           dense: Sequence[tuple[str, Sequence[int], np.ndarray]] = ()) -> bytes:
    """[(table, rows, dtype enum, dim)] (+ [(dense variable, shape, float32 values)]) -> serialized
    LookupResponse, rows copied once."""
    chunks: list = []
    for name, rows, dtype, dim in tables:
        sub = [*_bytes_field(1, name.encode("utf-8")), *_bytes_field(2, _raw(rows))]
        if dtype:
            sub += [_tag(3, _VARINT), _varint(dtype)]
        if dim:
            sub += [_tag(4, _VARINT), _varint(dim)]
        chunks += _len_field(1, sub, _size(sub))
    for name, shape, values in dense:
        sub = [*_bytes_field(1, name.encode("utf-8")), *_bytes_field(2, b"".join(_varint(int(d)) for d in shape)),
               *_bytes_field(3, _raw(values, np.dtype("<f4")))]
        chunks += _len_field(2, sub, _size(sub))
    return b"".join(chunks)


@dataclass
class DenseValueView:
    name: str = ""
    shape: tuple[int, ...] = ()
    values: memoryview = field(default_factory=lambda: memoryview(b""))


@dataclass
class LookupView:
    tables: list[TableRowsView]
    dense: list[DenseValueView]


@dataclass
class TableRowsView:
    table: str = ""
    values: memoryview = field(default_factory=lambda: memoryview(b""))
    dtype: int = 0
    dim: int = 0


def decode_lookup_response(data: bytes) -> LookupView:
    buf = memoryview(data)
    out = LookupView([], [])
    for number, wire_type, value in _fields(buf, 0, len(buf)):
        if number == 1 and wire_type == _LEN:
            out.tables.append(_table_rows(value))
        elif number == 2 and wire_type == _LEN:
            out.dense.append(_dense_value(value))
    return out


def _table_rows(value: memoryview) -> TableRowsView:
    item = TableRowsView()
    for n, wt, v in _fields(value, 0, len(value)):
        if n == 1 and wt == _LEN:
            item.table = bytes(v).decode("utf-8")
        elif n == 2 and wt == _LEN:
            item.values = v
        elif n == 3 and wt == _VARINT:
            item.dtype = v
        elif n == 4 and wt == _VARINT:
            item.dim = _signed64(v)
    return item


def _dense_value(value: memoryview) -> DenseValueView:
    item = DenseValueView()
    for n, wt, v in _fields(value, 0, len(value)):
        if n == 1 and wt == _LEN:
            item.name = bytes(v).decode("utf-8")
        elif n == 2 and wt == _LEN:  # packed
            shape, pos = [], 0
            while pos < len(v):
                d, pos = _read_varint(v, pos, len(v))
                shape.append(_signed64(d))
            item.shape += tuple(shape)
        elif n == 2 and wt == _VARINT:  # unpacked, as a parser must also accept
            item.shape += (_signed64(v),)
        elif n == 3 and wt == _LEN:
            item.values = v
    return item


# -- ApplyGradientsRequest / UpdateRequest: repeated TableUpdate tables = 1 -------------------------
#    TableUpdate {table = 1; ids = 2; values = 3; repeated float learning_rates = 4 (packed)}
#    ApplyGradientsRequest {global_step = 2; update_time = 3; repeated DenseGrad dense = 4 {name = 1;
#    values = 2}; claim_limit = 5}; UpdateRequest {update_time = 2}
@dataclass
class TableUpdateView:
    table: str = ""
    ids: memoryview = field(default_factory=lambda: memoryview(b""))
    values: memoryview = field(default_factory=lambda: memoryview(b""))
    learning_rates: list[float] = field(default_factory=list)


# the int64 fields of the two update requests, by number (from the generated descriptors)
APPLY_GLOBAL_STEP = ps_pb2.ApplyGradientsRequest.DESCRIPTOR.fields_by_name["global_step"].number
APPLY_UPDATE_TIME = ps_pb2.ApplyGradientsRequest.DESCRIPTOR.fields_by_name["update_time"].number
UPDATE_UPDATE_TIME = ps_pb2.UpdateRequest.DESCRIPTOR.fields_by_name["update_time"].number
APPLY_CLAIM_LIMIT = ps_pb2.ApplyGradientsRequest.DESCRIPTOR.fields_by_name["claim_limit"].number
_APPLY_DENSE = ps_pb2.ApplyGradientsRequest.DESCRIPTOR.fields_by_name["dense"].number


@dataclass
class UpdatesView:
    tables: list[TableUpdateView]
    scalars: dict[int, int]  # field number -> int64 value
    dense: list[tuple[str, memoryview]] = field(default_factory=list)  # ApplyGradients: (name, float32 bytes)


def encode_updates(tables: list[tuple[str, np.ndarray, np.ndarray, list[float] | None]],
                   scalars: dict[int, int], dense: Sequence[tuple[str, np.ndarray]] = ()) -> bytes:
    """[(table, int64 ids, float32 values, learning rates)] + {field: int64} (+ an ApplyGradientsRequest's
    [(dense variable, float32 gradient)]) -> serialized request."""
    chunks: list = []
    for name, ids, values, lrs in tables:
        sub = [*_bytes_field(1, name.encode("utf-8")), *_bytes_field(2, _raw(ids, np.dtype("<i8"))),
               *_bytes_field(3, _raw(values, np.dtype("<f4")))]
        if lrs:
            sub += _bytes_field(4, struct.pack(f"<{len(lrs)}f", *lrs))
        chunks += _len_field(1, sub, _size(sub))
    for number, value in sorted(scalars.items()):  # in field order, as protobuf writes them
        if dense and number > _APPLY_DENSE:
            chunks += _dense_fields(dense)
            dense = ()
        if value:
            chunks += [_tag(number, _VARINT), _varint(int(value))]
    return b"".join(chunks + _dense_fields(dense))


def _dense_fields(dense: Sequence[tuple[str, np.ndarray]]) -> list:
    chunks: list = []
    for name, grad in dense:
        sub = [*_bytes_field(1, name.encode("utf-8")), *_bytes_field(2, _raw(grad, np.dtype("<f4")))]
        chunks += _len_field(_APPLY_DENSE, sub, _size(sub))
    return chunks


def _table_update(value: memoryview) -> TableUpdateView:
    item = TableUpdateView()
    for n, wt, v in _fields(value, 0, len(value)):
        if n == 1 and wt == _LEN:
            item.table = bytes(v).decode("utf-8")
        elif n == 2 and wt == _LEN:
            item.ids = v
        elif n == 3 and wt == _LEN:
            item.values = v
        elif n == 4 and wt == _LEN:
            if v.nbytes % 4:
                raise ValueError("packed learning_rates not a whole number of floats")
            item.learning_rates += list(struct.unpack(f"<{v.nbytes // 4}f", v))
        elif n == 4 and wt == _I32:
            item.learning_rates.append(struct.unpack("<f", v)[0])
    return item


def _dense_grad(value: memoryview) -> tuple[str, memoryview]:
    name, values = "", memoryview(b"")
    for n, wt, v in _fields(value, 0, len(value)):
        if n == 1 and wt == _LEN:
            name = bytes(v).decode("utf-8")
        elif n == 2 and wt == _LEN:
            values = v
    return name, values


def decode_updates(data: bytes, what: str) -> UpdatesView:
    """Parse an ApplyGradientsRequest/UpdateRequest; ValueError names `what` when malformed."""
    buf = memoryview(data)
    view = UpdatesView([], {})
    try:
        for number, wire_type, value in _fields(buf, 0, len(buf)):
            if number == 1 and wire_type == _LEN:
                view.tables.append(_table_update(value))
            elif number == _APPLY_DENSE and wire_type == _LEN and what == "ApplyGradientsRequest":
                view.dense.append(_dense_grad(value))
            elif wire_type == _VARINT:
                view.scalars[number] = _signed64(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed {what} ({len(buf)} bytes): {exc}") from None
    return view
