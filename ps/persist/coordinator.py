"""Checkpoint coordination: one object owns the order of a coordinated save and the choice of what to restore.

A save invalidates a previous checkpoint of the same step, has every shard publish its part, checks
the parts and writes the checkpoint's manifest last, then prunes old checkpoints. The shards are reached
through a callable, so the same coordinator drives PS shards over gRPC (the client passes a fan-out of
Save RPCs) and the in-process shard of local mode (a direct call). The client and the shards must see
the same filesystem (local disk or a shared mount).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from ps.config import DEFAULT_KEEP_CHECKPOINTS
from ps.persist import checkpoint as layout

log = logging.getLogger(__name__)

class CheckpointCoordinator:
    def __init__(self, directory: str | os.PathLike, num_shards: int, keep: int = DEFAULT_KEEP_CHECKPOINTS) -> None:
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self.directory = Path(directory)
        self.num_shards = int(num_shards)
        self.keep = int(keep)

    def save(self, step: int, save_parts: Callable[[Path, int], object],
             stream_offsets: layout.StreamOffsets | None = None) -> Path:
        """`save_parts(path, step)` makes every shard write `path/shard-i-of-n/`; then the manifest goes last,
        with the input's `stream_offsets` when the job trains from a stream (the manifest is what makes the
        checkpoint exist, so the state and the offsets become durable together)."""
        path = layout.checkpoint_path(self.directory, int(step))
        path.mkdir(parents=True, exist_ok=True)
        layout.invalidate(path)
        save_parts(path, int(step))
        layout.write_manifest(path, int(step), self.num_shards, stream_offsets)
        removed = layout.prune(self.directory, self.keep)
        if removed:
            log.info("removed old checkpoints %s", [p.name for p in removed])
        return path

    def restore(self, step: int | None, restore_parts: Callable[[Path], object]) -> Path:
        """`restore_parts(path)` makes every shard load its ids from the complete checkpoint of `step`
        (None: the latest); a missing or incomplete one raises `CheckpointError` before any shard is asked."""
        path = layout.resolve(self.directory, step)
        restore_parts(path)
        return path

    def latest(self) -> Path | None:
        return layout.latest_checkpoint(self.directory)
