"""Coordinated checkpoint layout: `D/ckpt-<step>/shard-<i>-of-<n>/` per shard, then `MANIFEST.json` last.

A checkpoint exists only once its manifest does: every shard first publishes its own directory with
an atomic rename (its own checksummed `MANIFEST.json` inside, via `ps.persist.atomic_files`), then the
coordinator (the client) checks every shard's manifest and writes the checkpoint's manifest atomically.
A crash at any point leaves either the previous state or an incomplete directory that
`latest_checkpoint` never returns. Ids are filtered by owner at restore time, so a checkpoint
written by n shards restores onto any m.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ps.errors import CheckpointError
from ps.persist import atomic_files
from ps.persist.atomic_files import MANIFEST_NAME as MANIFEST

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_CKPT_RE = re.compile(r"^ckpt-(\d+)$")


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"ckpt-{int(step)}"


def shard_dir_name(index: int, num_shards: int) -> str:
    return f"shard-{index}-of-{num_shards}"


def write_meta(directory: Path, payload: dict[str, Any]) -> None:
    """The directory's checksummed manifest (store format), written last and atomically."""
    atomic_files.write_manifest(directory, {"format": FORMAT_VERSION, **payload})


def read_meta(directory: Path, what: str) -> dict[str, Any]:
    try:
        payload = atomic_files.read_manifest(directory, verify_files=False)
    except ValueError as exc:
        raise CheckpointError(f"{what}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{what}: unknown format in {directory / MANIFEST}")
    return payload


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path, bool]]:
    """(step, path, complete) for every `ckpt-<step>` under `directory`, oldest first."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        m = _CKPT_RE.match(entry.name)
        if m and entry.is_dir():
            found.append((int(m.group(1)), entry, (entry / MANIFEST).is_file()))
    return sorted(found)


def _valid(path: Path) -> bool:
    try:
        read_meta(path, "checkpoint manifest")
        return True
    except CheckpointError as exc:
        log.warning("skipping checkpoint %s: %s", path, exc)
        return False


def complete_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of checkpoints whose manifest exists and parses, oldest first."""
    return [(s, p) for s, p, has_manifest in list_checkpoints(directory) if has_manifest and _valid(p)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint; None when there is none."""
    complete = complete_checkpoints(directory)
    return complete[-1][1] if complete else None


def exit_snapshot_path(directory: str | os.PathLike, index: int, num_shards: int) -> Path:
    """Where `monolith ps --save-on-exit` publishes its part on SIGTERM (one per shard, replaced each time)."""
    return Path(directory) / "exit" / shard_dir_name(index, num_shards)


def startup_source(directory: str | os.PathLike, index: int, num_shards: int) -> tuple[str, Path] | None:
    """What a starting shard restores: ("exit", its own exit snapshot) when that is newer than the latest
    complete checkpoint, else ("checkpoint", that checkpoint); None when there is neither.

    Newer means a later manifest (each is written last, so its mtime is when the state was complete).
    """
    latest = latest_checkpoint(directory)
    snapshot = exit_snapshot_path(directory, index, num_shards)
    if (snapshot / MANIFEST).is_file():
        try:
            read_meta(snapshot, "exit snapshot")
        except CheckpointError as exc:
            log.warning("ignoring %s: %s", snapshot, exc)
        else:
            if latest is None or (snapshot / MANIFEST).stat().st_mtime_ns > (latest / MANIFEST).stat().st_mtime_ns:
                return "exit", snapshot
    return None if latest is None else ("checkpoint", latest)


def resolve(directory: str | os.PathLike, step: int | None) -> Path:
    if step is None:
        path = latest_checkpoint(directory)
        if path is None:
            raise CheckpointError(f"no complete checkpoint (with {MANIFEST}) under {directory}")
        return path
    path = checkpoint_path(directory, step)
    if not (path / MANIFEST).is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete or missing (no {MANIFEST})")
    return path


StreamOffsets = dict[str, dict[int, int]]
"""{topic: {partition: offset of the next record to train}}: how far a streaming job's input got."""


def write_manifest(ckpt: Path, step: int, num_shards: int,
                   stream_offsets: StreamOffsets | None = None) -> dict[str, Any]:
    """Check every shard's published part, merge them, write the manifest last (with the input's offsets
    when the job trains from a stream: the state in this checkpoint is exactly the records before them)."""
    metas = [read_meta(ckpt / shard_dir_name(i, num_shards), f"shard {i} of {ckpt}") for i in range(num_shards)]
    tables: dict[str, Any] = {}
    dense: dict[str, Any] = {}
    for i, meta in enumerate(metas):
        if meta["step"] != step or meta["num_shards"] != num_shards or meta["shard_index"] != i:
            raise CheckpointError(
                f"{ckpt / shard_dir_name(i, num_shards)} belongs to step {meta['step']} shard "
                f"{meta['shard_index']} of {meta['num_shards']}, expected step {step} shard {i} of {num_shards}"
            )
        for name, entry in meta["tables"].items():
            if name in tables and tables[name] != entry["config"]:
                raise CheckpointError(f"table {name!r} has different configs on different shards")
            tables[name] = entry["config"]
        for name, entry in meta["dense"].items():
            dense[name] = {"shape": entry["shape"], "config": entry["config"], "shard": i}
    manifest = {
        "step": step,
        "num_shards": num_shards,
        "global_step": metas[0]["global_step"],
        "tables": tables,
        "dense": dense,
        "rows": {name: sum(m["tables"].get(name, {}).get("rows", 0) for m in metas) for name in tables},
    }
    if stream_offsets is not None:
        manifest["stream_offsets"] = {topic: {str(p): int(o) for p, o in sorted(parts.items())}
                                      for topic, parts in sorted(_checked_offsets(stream_offsets, ckpt).items())}
    write_meta(ckpt, manifest)
    return manifest


def _checked_offsets(offsets: Any, where: Path) -> StreamOffsets:
    if not isinstance(offsets, dict):
        raise CheckpointError(f"{where}: stream offsets must be {{topic: {{partition: offset}}}}, got {offsets!r}")
    out: StreamOffsets = {}
    for topic, parts in offsets.items():
        if not isinstance(topic, str) or not topic or not isinstance(parts, dict):
            raise CheckpointError(f"{where}: bad stream offsets for topic {topic!r}: {parts!r}")
        out[topic] = {}
        for partition, offset in parts.items():
            try:
                p, o = int(partition), offset
            except (TypeError, ValueError):
                p, o = -1, None
            if p < 0 or not isinstance(o, int) or isinstance(o, bool) or o < 0:
                raise CheckpointError(f"{where}: bad stream offset {topic}[{partition!r}] = {offset!r}")
            out[topic][p] = o
    return out


def stream_offsets(ckpt: Path) -> StreamOffsets | None:
    """The input offsets a complete checkpoint was written at; None for a checkpoint of a job that did not
    train from a stream (and for checkpoints written before offsets existed)."""
    offsets = read_meta(ckpt, "checkpoint manifest").get("stream_offsets")
    return None if offsets is None else _checked_offsets(offsets, ckpt)


def invalidate(ckpt: Path) -> None:
    """Make an existing checkpoint incomplete before it is rewritten (re-save of the same step)."""
    try:
        os.remove(ckpt / MANIFEST)
        atomic_files.fsync_dir(ckpt)
    except FileNotFoundError:
        pass


def prune(directory: str | os.PathLike, keep: int) -> list[Path]:
    """Keep the newest `keep` complete checkpoints; drop older ones and older incomplete leftovers."""
    entries = list_checkpoints(directory)
    complete = complete_checkpoints(directory)
    if keep <= 0 or not complete:
        return []
    kept = complete[-keep:]
    oldest_kept = kept[0][0]
    removed = []
    for step, path, _ok in entries:
        if step < oldest_kept:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
