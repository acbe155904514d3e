"""Read a training checkpoint for export through the PS's own restore path.

A checkpoint (`ps.persist.checkpoint`: `ckpt-<step>/MANIFEST.json` + `shard-i-of-n/`, the same layout in
local and distributed mode) is loaded into an in-process `ShardState`, exactly as a PS shard restores it:
`ShardState(k, m).restore` keeps the ids serving shard k of m owns, whatever n wrote the checkpoint, and
checks every file against its manifest. The exporter then takes each table's rows out of the store.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ps.config import TableConfig
from ps.errors import CheckpointError
from ps.persist import checkpoint
from ps.store.shard_state import ShardState


class CheckpointReader:
    """One complete checkpoint under a model directory: its tables' configs and dims, its dense values and,
    per serving shard, its rows."""

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = path
        self.step = int(manifest["step"])
        self.global_step = int(manifest["global_step"])
        self.tables: dict[str, dict] = dict(manifest["tables"])  # name -> the store's table config

    @classmethod
    def open(cls, model_dir: str | os.PathLike, step: int | None = None) -> CheckpointReader:
        """The checkpoint of `step` (None: the latest complete one); `CheckpointError` when there is none."""
        path = checkpoint.resolve(model_dir, step)
        return cls(path, checkpoint.read_meta(path, "checkpoint manifest"))

    def dim(self, table: str) -> int:
        return TableConfig.from_dict(self.tables[table]).dim

    def shard(self, index: int = 0, num_shards: int = 1, tables: list[str] | None = None) -> ShardState:
        """The state serving shard `index` of `num_shards` restores: its rows of `tables` (None: all)."""
        state = ShardState(index, num_shards)
        try:
            state.restore(str(self.path), tables=tables)
        except CheckpointError:
            raise
        except (OSError, ValueError, KeyError) as exc:  # what the store raises on a file it cannot use
            raise CheckpointError(f"cannot restore {self.path}: {exc}") from exc
        return state

    def dense_values(self) -> dict[str, np.ndarray]:
        """Every dense variable's value in its shape (named `dense_<i>` by creation order, as the worker does)."""
        return {name: values.reshape(shape) for name, shape, values in self.shard(tables=[]).dense_pull([])}

    def table_rows(self, table: str, shard: tuple[int, int] = (0, 1)) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 rows) of `table` that serving shard `shard` = (k, m) owns."""
        return self.shard(*shard, tables=[table]).table(table).items()
