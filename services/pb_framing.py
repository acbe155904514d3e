"""Monolith's binary record stream: optional headers, an 8-byte length, then a serialized proto.

Framing (docs/data_formats.md): every integer is an 8-byte little-endian unsigned word. Before each
record comes either a lagrange header (one word: pb type in the low byte, data-source key in bits
8..31) or, in this order, a kafka-dump prefix, a sort id (a size word, then that many bytes) and a
kafka-dump word. The reader names the byte offset of whatever is wrong, so a truncated or corrupt
file can be located and cut; the writer always writes zero headers (as the original does).
"""
from __future__ import annotations

import io
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

_WORD = struct.Struct("<Q")
DEADBEEF = 0xFEFEFEFE
DEFAULT_MAX_RECORD_BYTES = 1 << 30


class FramingError(ValueError):
    """The stream is truncated or corrupt at `offset` (bytes from the start of the stream)."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"byte offset {offset}: {message}")
        self.offset = offset


@dataclass(frozen=True)
class FramingFlags:
    lagrangex_header: bool = False
    has_sort_id: bool = True       # the original's default
    kafka_dump: bool = False
    kafka_dump_prefix: bool = False


@dataclass(frozen=True)
class Record:
    offset: int            # where the record's headers start
    payload: bytes
    data_source_key: int = 0
    pb_type: int = 0


def java_string_hash(text: str) -> int:
    """Java's String.hashCode as an unsigned 32-bit value (UTF-16 code units)."""
    h = 0
    data = text.encode("utf-16-le")
    for i in range(0, len(data), 2):
        h = (31 * h + int.from_bytes(data[i:i + 2], "little")) & 0xFFFFFFFF
    return h


def lg_header(source: str) -> bytes:
    """The lagrange header data_gen_utils writes: bytes [0, h0, h1, h2, 0, 0, 0, 0], h = hash(source)."""
    if not source:
        return bytes(8)
    h = java_string_hash(source).to_bytes(4, "little")
    return bytes([0, h[0], h[1], h[2], 0, 0, 0, 0])


def sort_header(sort_id: bool, kafka_dump: bool, kafka_dump_prefix: bool) -> bytes:
    """Zero headers for the non-lagrange combinations data_gen_utils accepts."""
    if not sort_id:
        if kafka_dump or kafka_dump_prefix:
            raise ValueError("kafka_dump / kafka_dump_prefix headers need sort_id")
        return b""
    if kafka_dump and kafka_dump_prefix:
        raise ValueError("kafka_dump and kafka_dump_prefix cannot be combined")
    if kafka_dump_prefix:
        return bytes(24)
    return bytes(16) if kafka_dump else bytes(8)


class PBReader:
    """Iterate the records of a framed stream (a file object, or stdin's buffer by default)."""

    def __init__(self, stream: BinaryIO | None = None, flags: FramingFlags = FramingFlags(),
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.flags = flags
        self.max_record_bytes = int(max_record_bytes)
        self.offset = 0

    def _read(self, n: int, what: str, record_offset: int, allow_eof: bool = False) -> bytes | None:
        data = self.stream.read(n)
        if allow_eof and not data:
            return None
        if len(data) != n:
            raise FramingError(f"truncated {what}: {n} bytes needed, {len(data)} left "
                               f"(record starting at byte {record_offset})", self.offset)
        self.offset += n
        return data

    def _word(self, what: str, record_offset: int, allow_eof: bool = False) -> int | None:
        data = self._read(8, what, record_offset, allow_eof)
        return None if data is None else _WORD.unpack(data)[0]

    def __iter__(self) -> Iterator[Record]:
        return self

    def __next__(self) -> Record:
        start = self.offset
        first = True  # end of stream is fine only before a record's first byte

        def word(what: str) -> int:
            nonlocal first
            value = self._word(what, start, allow_eof=first)
            if value is None:
                raise StopIteration
            first = False
            return value

        f = self.flags
        source_key = pb_type = 0
        if f.lagrangex_header:
            h = word("lagrange header")
            pb_type, source_key = h & 0xFF, ((h & 0xFFFFFFFF) >> 8) << 8
        else:
            sort_size = None
            if f.kafka_dump_prefix:
                s = word("kafka-dump prefix")
                if s == 0:
                    word("kafka-dump prefix")
                else:
                    sort_size = s
            if f.has_sort_id:
                size = sort_size if sort_size is not None else word("sort-id size")
                if size > self.max_record_bytes:
                    raise FramingError(f"sort-id size {size} is implausible (corrupt stream?)", self.offset - 8)
                if size:
                    self._read(size, "sort id", start)
                    first = False
            if f.kafka_dump:
                word("kafka-dump word")
        length_at = self.offset
        length = word("record length")
        if length == DEADBEEF:
            raise FramingError("record length is the DEADBEEF marker 0xFEFEFEFE (corrupt stream)", length_at)
        if length > self.max_record_bytes:
            raise FramingError(f"record length {length} exceeds the {self.max_record_bytes}-byte limit "
                               f"(corrupt stream?)", length_at)
        payload = self._read(length, f"record payload of {length} bytes", start)
        assert payload is not None  # only allow_eof reads return None
        return Record(start, payload, source_key, pb_type)


class PBWriter:
    """Write records with zero headers for the given flags (a lagrange header may carry a source)."""

    def __init__(self, stream: BinaryIO, flags: FramingFlags = FramingFlags()) -> None:
        self.stream = stream
        self.flags = flags

    def write(self, payload: bytes, source: str = "") -> None:
        f = self.flags
        if f.lagrangex_header:
            header = lg_header(source)
        else:
            header = (bytes(16) if f.kafka_dump_prefix else b"") + (bytes(8) if f.has_sort_id else b"") + \
                (bytes(8) if f.kafka_dump else b"")
        self.stream.write(header + _WORD.pack(len(payload)) + payload)


def frame(payloads, flags: FramingFlags = FramingFlags()) -> bytes:
    """A whole framed stream in memory (tests, small files)."""
    buf = io.BytesIO()
    writer = PBWriter(buf, flags)
    for p in payloads:
        writer.write(p)
    return buf.getvalue()
