"""Read a training checkpoint for export: table configs, each table's (id, row value) pairs, dense values.

Reads the PS checkpoint layout (`ckpt-<step>/MANIFEST.json` + `shard-i-of-n/`, ps.checkpoint) and the
local-mode layout (`ckpt-<step>/state.json` + `tables/<name>/` + `dense.npz`). Rows come straight from
the verified table files (ps.table_io), one chunk at a time and without optimizer state; `shard=(k, m)`
keeps the ids a serving shard k of m owns (ps.sharding), so a checkpoint of n training shards exports
to any number of serving shards.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ps import checkpoint as ps_checkpoint
from ps.sharding import id_owner
from ps.table_io import SavedRows


class ExportCheckpointError(ValueError):
    """No usable checkpoint, or a corrupt one (the message names the file)."""


@dataclass
class CheckpointReader:
    path: Path
    step: int
    global_step: int
    tables: dict[str, dict]                 # name -> the store's table config
    _table_dirs: dict[str, list[Path]]      # name -> the directories holding its rows
    _dense: dict[str, np.ndarray]

    @classmethod
    def open(cls, model_dir: str | os.PathLike, step: int | None = None) -> CheckpointReader:
        root = Path(model_dir)
        candidate = root / f"ckpt-{step}" if step is not None else None
        if candidate is not None and (candidate / "state.json").is_file():
            return cls._open_local(candidate)
        if step is None:
            local = sorted((int(p.name[5:]), p) for p in root.glob("ckpt-*")
                           if p.name[5:].isdigit() and (p / "state.json").is_file())
            coordinated = ps_checkpoint.latest_checkpoint(root)
            if local and (coordinated is None or local[-1][0] > int(coordinated.name[5:])):
                return cls._open_local(local[-1][1])
        try:
            path = ps_checkpoint.resolve(root, step)
        except ps_checkpoint.CheckpointError as exc:
            raise ExportCheckpointError(str(exc)) from exc
        return cls._open_coordinated(path)

    @classmethod
    def _open_coordinated(cls, path: Path) -> CheckpointReader:
        try:
            manifest = ps_checkpoint.read_meta(path, "checkpoint manifest")
            n = manifest["num_shards"]
            metas = [ps_checkpoint.read_meta(path / ps_checkpoint.shard_dir_name(j, n), f"shard {j} of {path}")
                     for j in range(n)]
        except ps_checkpoint.CheckpointError as exc:
            raise ExportCheckpointError(str(exc)) from exc
        dirs = {name: [path / ps_checkpoint.shard_dir_name(j, n) / meta["tables"][name]["dir"]
                       for j, meta in enumerate(metas) if name in meta["tables"]] for name in manifest["tables"]}
        dense = {}
        for name, entry in manifest["dense"].items():
            j = entry["shard"]
            src = path / ps_checkpoint.shard_dir_name(j, n) / metas[j]["dense"][name]["dir"]
            dense[name] = _single_row(src).reshape(entry["shape"])
        return cls(path, int(manifest["step"]), int(manifest["global_step"]), dict(manifest["tables"]), dirs, dense)

    @classmethod
    def _open_local(cls, path: Path) -> CheckpointReader:
        try:
            state = json.loads((path / "state.json").read_text())
            dirs = {name: [path / "tables" / name] for name in state["tables"]}
            tables = {name: _open_rows(d[0]).payload["config"] for name, d in dirs.items()}
            with np.load(path / "dense.npz") as data:
                dense = {k: data[k] for k in data.files if k.startswith("dense_")}
        except (OSError, ValueError, KeyError) as exc:
            raise ExportCheckpointError(f"cannot read local checkpoint {path}: {exc}") from exc
        step = int(state["global_step"])
        return cls(path, step, step, tables, dirs, dense)

    def dim(self, table: str) -> int:
        config = self.tables[table]
        if "segments" in config:
            return int(sum(s["dim"] for s in config["segments"]))
        return int(config["dim"])

    def dense_values(self) -> dict[str, np.ndarray]:
        return dict(self._dense)

    def table_chunks(self, table: str, shard: tuple[int, int] | None = None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 values [n, dim]) chunk by chunk; with shard=(k, m) only ids floormod(id, m) == k."""
        if table not in self.tables:
            raise ExportCheckpointError(f"checkpoint {self.path} has no table {table!r} (has {sorted(self.tables)})")
        for directory in self._table_dirs[table]:
            for chunk in _open_rows(directory).chunks():
                ids, values = chunk["ids"], chunk["values"]
                if shard is not None:
                    keep = id_owner(ids, shard[1]) == shard[0]
                    ids, values = ids[keep], values[keep]
                yield np.array(ids, np.int64), np.array(values, np.float32)

    def table_rows(self, table: str, shard: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        parts = list(self.table_chunks(table, shard))
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, self.dim(table)), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _open_rows(directory: Path) -> SavedRows:
    try:
        return SavedRows.open(directory)
    except (OSError, ValueError) as exc:
        raise ExportCheckpointError(f"cannot read table files in {directory}: {exc}") from exc


def _single_row(directory: Path) -> np.ndarray:
    chunks = list(_open_rows(directory).chunks())
    values = np.concatenate([c["values"] for c in chunks]) if chunks else np.zeros((0, 0), np.float32)
    if values.shape[0] != 1:
        raise ExportCheckpointError(f"{directory}: a dense variable must be one row, found {values.shape[0]}")
    return np.array(values[0], np.float32)


def checkpoint_steps(model_dir: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints under `model_dir` (either layout), oldest first."""
    root = Path(model_dir)
    local = {int(p.name[5:]) for p in root.glob("ckpt-*") if p.name[5:].isdigit() and (p / "state.json").is_file()}
    return sorted(local | {step for step, _ in ps_checkpoint.complete_checkpoints(root)})
