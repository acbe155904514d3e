"""The dump directory on disk: `model_dump.pb` (a framed, checksummed `ModelDump`) and `functions/` (a SavedModel).

`model_dump.pb` is a magic string, the format version, the payload length and the payload's sha256,
then the serialized `ModelDump`; the dump lists every file of `functions/` with its size and sha256. A
reader checks all of it before trusting anything, so a truncated, corrupted or foreign file, or one
written by a newer format, is refused with an error naming the file and what is wrong. Older format
versions stay readable.
"""
from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

from google.protobuf.message import DecodeError

from protos import model_dump_pb2 as pb
from ps.persist.atomic_files import file_sha256, write_file_synced

FORMAT_VERSION = 1
"""The version this project writes; it reads every version from 1 up to this one."""
DUMP_FILE = "model_dump.pb"
FUNCTIONS_DIR = "functions"
MAGIC = b"MONOLITH-MODEL-DUMP\x00"
_HEADER = struct.Struct("<IQ32s")  # format version, payload bytes, payload sha256


class ModelDumpError(ValueError):
    """A dump that cannot be used: missing, truncated, corrupted, of an unknown version, or not a dump."""


def encode(dump: pb.ModelDump) -> bytes:
    payload = dump.SerializeToString(deterministic=True)
    return MAGIC + _HEADER.pack(dump.format_version, len(payload), hashlib.sha256(payload).digest()) + payload


def decode(data: bytes, where: str) -> pb.ModelDump:
    head = len(MAGIC) + _HEADER.size
    if not data:
        raise ModelDumpError(f"{where}: empty file: not a model dump (or one truncated to 0 bytes)")
    if len(data) < head:
        if not MAGIC.startswith(data[:len(MAGIC)]):
            raise ModelDumpError(f"{where}: not a model dump (no {MAGIC[:-1].decode()} header)")
        raise ModelDumpError(f"{where}: truncated: {len(data)} bytes, the header alone is {head}")
    if data[:len(MAGIC)] != MAGIC:
        raise ModelDumpError(f"{where}: not a model dump (no {MAGIC[:-1].decode()} header)")
    version, length, digest = _HEADER.unpack_from(data, len(MAGIC))
    if not 1 <= version <= FORMAT_VERSION:
        raise ModelDumpError(f"{where}: format version {version}, but this project reads versions 1 to "
                             f"{FORMAT_VERSION} (written by a newer project? upgrade to load it)")
    payload = data[head:]
    if len(payload) != length:
        raise ModelDumpError(f"{where}: truncated or padded: the header announces {length} payload bytes, the file "
                             f"holds {len(payload)}")
    if hashlib.sha256(payload).digest() != digest:
        raise ModelDumpError(f"{where}: checksum mismatch (the file is corrupted)")
    dump = pb.ModelDump()
    try:
        dump.ParseFromString(payload)
    except DecodeError as exc:
        raise ModelDumpError(f"{where}: the checksum matches but the payload does not parse: {exc}") from exc
    if dump.format_version != version:
        raise ModelDumpError(f"{where}: header says format version {version}, the payload {dump.format_version}")
    return dump


def fsync_tree(root: Path) -> list[pb.FileDigest]:
    """fsync every file under `root` (TensorFlow does not) and return each file's digest, paths relative to the
    dump directory (`root`'s parent)."""
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        out.append(pb.FileDigest(path=str(path.relative_to(root.parent)), size=path.stat().st_size,
                                 sha256=file_sha256(path)))
    for directory in sorted({p.parent for p in root.rglob("*")} | {root}):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return out


def write(directory: Path, dump: pb.ModelDump) -> None:
    """Write `model_dump.pb` (fsynced) into a directory being staged: the caller publishes it by renaming."""
    write_file_synced(directory / DUMP_FILE, encode(dump))


def read(directory: str | os.PathLike) -> pb.ModelDump:
    """The `ModelDump` of a dump directory, after checking the file and every file of its functions."""
    directory = Path(directory)
    path = directory / DUMP_FILE
    if not directory.is_dir():
        raise ModelDumpError(f"model dump directory {str(directory)!r} does not exist")
    if not path.is_file():
        raise ModelDumpError(f"{directory} holds no {DUMP_FILE}: not a model dump (or an unfinished one)")
    dump = decode(path.read_bytes(), str(path))
    for f in dump.function_files:
        fpath = directory / f.path
        if not fpath.is_file():
            raise ModelDumpError(f"{fpath}: listed in the dump but missing")
        if fpath.stat().st_size != f.size:
            raise ModelDumpError(f"{fpath}: {fpath.stat().st_size} bytes, the dump lists {f.size} (truncated?)")
        if file_sha256(fpath) != f.sha256:
            raise ModelDumpError(f"{fpath}: sha256 mismatch (corrupted)")
    return dump
