"""Crash-safe file publication: nothing half-written is ever visible under its final name.

Files are written to a temporary sibling, fsynced, renamed, and the parent directory fsynced. A
checkpoint directory is built under a temporary name, gets a checksummed manifest written last, and is
then renamed into place; readers call `read_manifest` to verify every listed file before trusting it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from ps.errors import CorruptCheckpointError

MANIFEST_NAME = "MANIFEST.json"
_HASH_BLOCK = 1 << 22


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_synced(path: str | os.PathLike, chunks: bytes | memoryview | list) -> str:
    """Write `chunks` (bytes-like or a list of them) to `path`, fsync it, and return its sha256 hex."""
    digest = hashlib.sha256()
    parts = chunks if isinstance(chunks, list) else [chunks]
    with open(path, "wb") as f:
        for part in parts:
            view = memoryview(part)
            if view.nbytes == 0:
                continue
            view = view.cast("B")
            digest.update(view)
            f.write(view)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview | list) -> str:
    """Atomically replace `path` with `data`; returns the sha256 hex of what was written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        digest = write_file_synced(tmp, data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)
    return digest


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def write_manifest(directory: str | os.PathLike, payload: dict, file_digests: dict[str, str] | None = None) -> None:
    """Write the manifest of `directory` last: every other file's size and sha256, plus `payload`.

    `file_digests` maps file names to sha256 already computed while writing (saves re-reading them).
    """
    directory = Path(directory)
    file_digests = dict(file_digests or {})
    files = {}
    for entry in sorted(directory.iterdir()):
        if entry.name == MANIFEST_NAME or entry.name.startswith(".") or not entry.is_file():
            continue
        sha = file_digests.get(entry.name) or file_sha256(entry)
        files[entry.name] = {"bytes": entry.stat().st_size, "sha256": sha}
    body = {"files": files, "payload": payload}
    doc = {"body": body, "sha256": hashlib.sha256(_canonical(body)).hexdigest()}
    atomic_write_bytes(directory / MANIFEST_NAME, json.dumps(doc, sort_keys=True, indent=1).encode())


def read_manifest(directory: str | os.PathLike, verify_files: bool = True) -> dict:
    """Return the manifest payload after checking the manifest's own checksum and every listed file."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise CorruptCheckpointError(f"checkpoint directory {str(directory)!r} does not exist")
    if not path.is_file():
        raise CorruptCheckpointError(f"checkpoint {str(directory)!r} has no {MANIFEST_NAME} (incomplete save?)")
    try:
        doc = json.loads(path.read_bytes())
        body = doc["body"]
        ok = hashlib.sha256(_canonical(body)).hexdigest() == doc["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpointError(f"{path}: unreadable manifest ({exc})") from exc
    if not ok:
        raise CorruptCheckpointError(f"{path}: manifest checksum mismatch")
    if verify_files:
        for name, meta in body["files"].items():
            fpath = directory / name
            if not fpath.is_file():
                raise CorruptCheckpointError(f"{fpath}: listed in the manifest but missing")
            size = fpath.stat().st_size
            if size != meta["bytes"]:
                raise CorruptCheckpointError(f"{fpath}: size {size} != {meta['bytes']} in the manifest (truncated?)")
            if file_sha256(fpath) != meta["sha256"]:
                raise CorruptCheckpointError(f"{fpath}: sha256 mismatch (corrupted)")
    return body["payload"]


def publish_directory(staging: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename a fully written `staging` directory to `final`, replacing any previous `final`.

    When `final` exists it is first renamed aside, so at every instant `final` is either absent, the old
    complete directory, or the new complete directory.
    """
    staging, final = Path(staging), Path(final)
    for entry in staging.iterdir():
        if entry.is_file():
            with open(entry, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(staging)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
        os.rename(final, old)
    os.rename(staging, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `final` to fill; publish it on success, delete it on any error.

    The caller writes its files and then its manifest (`write_manifest`) inside the block.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex}")
    staging.mkdir()
    try:
        yield staging
        publish_directory(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
