"""One PS shard's state as plain functions over numpy: tables, dense variables, the global step.

No gRPC here (the servicer is a thin translation layer), so every rule is testable in-process.
Errors come from `ps.errors`, so the servicer maps them to status codes and the client back to the
same classes: ValueError/TypeError → bad input, `PSNotFound`, `PSAlreadyExists`, `WrongShard`.
A failed call leaves the state unchanged: inputs are validated before anything is mutated, and
restore builds new tables before swapping them in.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ps.config import OptimizerConfig, TableConfig
from ps.errors import CheckpointError, PSAlreadyExists, PSNotFound, PSResourceExhausted, WrongShard
from ps.persist import atomic_files
from ps.persist import checkpoint as ckpt
from ps.sharding import dense_owner, id_owner
from ps.store.table import CheckedUpdate, EmbeddingTable

log = logging.getLogger(__name__)

_DENSE_ID = np.zeros(1, dtype=np.int64)
_MAX_GLOBAL_STEP = 2**63 - 1  # the wire (GlobalStepResponse) and manifests hold it as int64


@dataclass
class DenseVariable:
    """A dense variable is a one-row table (id 0, dim = prod(shape)): the same optimizers, state and save path."""

    table: EmbeddingTable
    shape: tuple[int, ...]


def dense_table_config(shape: tuple[int, ...], optimizer: OptimizerConfig | dict[str, Any]) -> TableConfig:
    """A dense variable is a one-row table of dim prod(shape) with the variable's optimizer."""
    return TableConfig.from_dict({"dim": int(math.prod(shape)), "initializer": {"type": "zeros"},
                                  "optimizer": OptimizerConfig.of(optimizer).to_dict()})


def _check_shape(name: str, shape) -> tuple[int, ...]:
    shape = tuple(shape)
    if not shape or any((not isinstance(d, int | np.integer)) or d <= 0 for d in shape):
        raise ValueError(f"dense variable {name!r}: shape must be a non-empty list of positive ints, got {list(shape)}")
    return tuple(int(d) for d in shape)


def _machine_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not reported here: no check
        return 1 << 62


def check_fits_in_memory(what: str, config: TableConfig) -> None:
    """Refuse a table whose first allocation could not fit in this machine's memory (rows with values and
    optimizer state, the hash index), before allocating it: asking must not be a way to kill the shard."""
    needed = config.initial_capacity * (config.dim * 4 * 3 + 32)
    available = _machine_memory_bytes()
    if needed > available:
        raise PSResourceExhausted(
            f"{what}: initial_capacity {config.initial_capacity} rows of dim {config.dim} need about "
            f"{needed / 2**30:.1f} GiB, more than this machine's {available / 2**30:.1f} GiB")


class ShardState:
    def __init__(self, shard_index: int, num_shards: int) -> None:
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
        self.shard_index = shard_index
        self.num_shards = num_shards
        self.tables: dict[str, EmbeddingTable] = {}
        self.dense: dict[str, DenseVariable] = {}
        self._global_step = 0
        self._barriers: dict[str, tuple[int, dict[str, bytes]]] = {}  # name -> (expected, {arrived: note}); never saved
        self._lock = threading.RLock()
        self.started = time.time()
        self.restored_from = ""

    # -- tables -------------------------------------------------------------------------------
    def create_table(self, name: str, config: TableConfig | dict[str, Any]) -> tuple[EmbeddingTable, bool]:
        """Idempotent: an equal (normalized) config returns the existing table; a different one is a conflict."""
        if not name:
            raise ValueError("table name must be non-empty")
        config = TableConfig.of(config)
        check_fits_in_memory(f"table {name!r}", config)
        table = EmbeddingTable(config)
        with self._lock:
            existing = self.tables.get(name)
            if existing is not None:
                if existing.config != table.config:
                    raise PSAlreadyExists(
                        f"table {name!r} already exists with config {existing.config}, requested {table.config}"
                    )
                return existing, False
            self.tables[name] = table
        log.info("created table %r dim=%d segments=%s", name, table.dim, list(table.segment_dims))
        return table, True

    def table(self, name: str) -> EmbeddingTable:
        try:
            return self.tables[name]
        except KeyError:
            raise PSNotFound(f"unknown table {name!r} on shard {self.shard_index} "
                              f"(known: {sorted(self.tables)[:20]})") from None

    def check_owned(self, name: str, ids: np.ndarray) -> None:
        if self.num_shards == 1 or ids.size == 0:
            return
        owners = id_owner(ids, self.num_shards)
        bad = owners != self.shard_index
        if bad.any():
            first = int(ids[np.argmax(bad)])
            raise WrongShard(
                f"table {name!r}: {int(bad.sum())} ids do not belong to shard {self.shard_index} of "
                f"{self.num_shards} (e.g. id {first} belongs to shard {first % self.num_shards}); "
                f"is the client configured with {self.num_shards} shards?"
            )

    def evict(self, names: list[str]) -> dict[str, int]:
        tables = [(n, self.table(n)) for n in names] if names else list(self.tables.items())
        return {n: int(t.evict_expired()) for n, t in tables}

    # -- dense variables -----------------------------------------------------------------------
    def _check_dense_owner(self, name: str) -> None:
        owner = dense_owner(name, self.num_shards)
        if owner != self.shard_index:
            raise WrongShard(f"dense variable {name!r} belongs to shard {owner}, not {self.shard_index}")

    def create_dense(self, name: str, shape, optimizer: OptimizerConfig | dict[str, Any],
                     initial: np.ndarray | None) -> bool:
        """Idempotent; the first creator's initial value wins."""
        if not name:
            raise ValueError("dense variable name must be non-empty")
        self._check_dense_owner(name)
        shape = _check_shape(name, shape)
        config = dense_table_config(shape, optimizer)
        check_fits_in_memory(f"dense variable {name!r}", config)
        table = EmbeddingTable(config)
        if initial is not None:
            initial = np.asarray(initial, dtype=np.float32)
            if initial.size != table.dim:
                raise ValueError(f"dense variable {name!r}: initial value has {initial.size} values, "
                                 f"shape {list(shape)} needs {table.dim}")
            table.assign(_DENSE_ID, initial.reshape(1, -1))  # validates finiteness before we publish the table
        with self._lock:
            existing = self.dense.get(name)
            if existing is not None:
                if existing.shape != shape or existing.table.config != table.config:
                    raise PSAlreadyExists(
                        f"dense variable {name!r} exists with shape {list(existing.shape)} and config "
                        f"{existing.table.config}, requested shape {list(shape)} and {table.config}"
                    )
                return False
            self.dense[name] = DenseVariable(table, shape)
        return True

    def dense_var(self, name: str) -> DenseVariable:
        try:
            return self.dense[name]
        except KeyError:
            raise PSNotFound(f"unknown dense variable {name!r} on shard {self.shard_index}") from None

    def dense_pull(self, names: list[str]) -> list[tuple[str, tuple[int, ...], np.ndarray]]:
        chosen = names or sorted(self.dense)
        out = []
        for name in chosen:
            var = self.dense_var(name)
            out.append((name, var.shape, var.table.lookup(_DENSE_ID)[0]))
        return out

    def dense_push(self, grads: dict[str, np.ndarray], global_step: int, learning_rate: float | None) -> None:
        self.apply_dense(self.check_dense(grads, global_step, learning_rate))

    def check_dense(self, grads: dict[str, np.ndarray], global_step: int = 0,
                    learning_rate: float | None = None) -> list[CheckedUpdate]:
        """Every check of every gradient (shape, finite values, the optimizers' step arguments), nothing applied:
        raises before anything changes. Each gradient is checked once, by its one-row table."""
        lrs = None if learning_rate is None else [float(learning_rate)]
        checked = []
        for name, grad in grads.items():
            var = self.dense_var(name)
            if grad.size != var.table.dim:
                raise ValueError(f"dense variable {name!r}: gradient has {grad.size} values, "
                                 f"shape {list(var.shape)} needs {var.table.dim}")
            try:
                checked.append(var.table.check_gradients(_DENSE_ID, grad.reshape(1, -1), global_step,
                                                         learning_rates=lrs))
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"dense variable {name!r}: {exc}") from None
        return checked

    def apply_dense(self, checked: list[CheckedUpdate]) -> None:
        """Apply what `check_dense` accepted."""
        for update in checked:
            update.table.apply_checked(update)

    # -- global step and barriers (held by shard 0) --------------------------------------------
    def _check_shard_0(self, what: str) -> None:
        if self.shard_index != 0:
            raise WrongShard(f"{what} live on shard 0, not shard {self.shard_index}")

    def increment_global_step(self, n: int, limit: int | None = None) -> tuple[int, bool]:
        """(global step, applied): with `limit`, nothing changes when the result would exceed it."""
        self._check_shard_0("the global step and barriers")
        if n < 0:
            raise ValueError(f"global step increment must be >= 0, got {n}")
        with self._lock:
            if limit is not None and self._global_step + n > limit:
                return self._global_step, False
            if self._global_step + n > _MAX_GLOBAL_STEP:  # it could no longer be reported or checkpointed
                raise ValueError(f"global step {self._global_step} + increment {n} leaves the int64 range")
            self._global_step += n
            return self._global_step, True

    def arrive(self, name: str, participant: str, expected: int, note: bytes = b"") -> tuple[list[str], int]:
        """Record `participant` (if not empty) at barrier `name`; (who has arrived, expected).

        Idempotent, so waiting participants can re-arrive on every poll. Every caller of one name must
        pass the same `expected` (a mismatch means two jobs share a name, or a bug). A participant may leave
        a `note` for the others (`notes`), replaced by its next non-empty one."""
        self._check_shard_0("the global step and barriers")
        if not name:
            raise ValueError("barrier name must be non-empty")
        if expected < 1:
            raise ValueError(f"barrier {name!r}: expected must be >= 1, got {expected}")
        with self._lock:
            known, arrived = self._barriers.get(name, (expected, {}))
            if known != expected:
                raise PSAlreadyExists(f"barrier {name!r} expects {known} participants, this caller {expected}")
            if participant and (participant not in arrived or note and arrived[participant] != note):
                if participant not in arrived:
                    log.info("barrier %r: %s arrived (%d of %d)", name, participant, len(arrived) + 1, expected)
                arrived = {**arrived, participant: note or arrived.get(participant, b"")}
                self._barriers[name] = (expected, arrived)
            return sorted(arrived), expected

    def notes(self, name: str) -> dict[str, bytes]:
        """The non-empty notes left at barrier `name`, by participant."""
        with self._lock:
            _expected, arrived = self._barriers.get(name, (0, {}))
            return {p: n for p, n in arrived.items() if n}

    @property
    def global_step(self) -> int:
        return self._global_step

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, checkpoint_path: str, step: int) -> tuple[Path, dict[str, int]]:
        """Write this shard's part under `<checkpoint_path>/shard-i-of-n/`, published by one rename."""
        final = Path(checkpoint_path) / ckpt.shard_dir_name(self.shard_index, self.num_shards)
        with self._lock:
            tables = dict(self.tables)
            dense = dict(self.dense)
            global_step = self._global_step
        meta: dict[str, Any] = {"step": int(step), "shard_index": self.shard_index, "num_shards": self.num_shards,
                                "global_step": global_step, "tables": {}, "dense": {}}
        rows = {}
        with atomic_files.staged_directory(final) as tmp:
            for i, (name, table) in enumerate(sorted(tables.items())):
                sub = f"t{i:05d}"
                table.save(tmp / sub)
                rows[name] = int(table.size)
                meta["tables"][name] = {"dir": sub, "config": table.config, "rows": rows[name]}
            for i, (name, var) in enumerate(sorted(dense.items())):
                sub = f"d{i:05d}"
                var.table.save(tmp / sub)
                meta["dense"][name] = {"dir": sub, "shape": list(var.shape), "config": var.table.config}
            ckpt.write_meta(tmp, meta)
        log.info("saved step %d: %d tables, %d dense -> %s", step, len(tables), len(dense), final)
        return final, rows

    def restore_own_part(self, part_dir: str | Path) -> dict[str, Any]:
        """Load everything from a part this same shard wrote (an exit snapshot): tables, dense, global step."""
        part_dir = Path(part_dir)
        meta = ckpt.read_meta(part_dir, f"shard part {part_dir}")
        if (meta["shard_index"], meta["num_shards"]) != (self.shard_index, self.num_shards):
            raise CheckpointError(f"{part_dir} was written by shard {meta['shard_index']} of "
                                       f"{meta['num_shards']}, not shard {self.shard_index} of {self.num_shards}")
        tables = {name: EmbeddingTable.load(str(part_dir / e["dir"])) for name, e in meta["tables"].items()}
        dense = {name: DenseVariable(EmbeddingTable.load(str(part_dir / e["dir"])), tuple(e["shape"]))
                 for name, e in meta["dense"].items()}
        with self._lock:
            self.tables.update(tables)
            self.dense.update(dense)
            self._global_step = int(meta["global_step"])
            self.restored_from = str(part_dir)
        log.info("restored own part %s: %s", part_dir, {name: t.size for name, t in tables.items()})
        return {"rows": {name: int(t.size) for name, t in tables.items()}, "dense": sorted(dense),
                "global_step": int(meta["global_step"])}

    def restore(self, checkpoint_path: str, tables: Collection[str] | None = None) -> dict[str, Any]:
        """Load exactly the ids (and dense variables) this shard owns from a checkpoint of any shard count;
        with `tables`, only those tables (an exporter reading the dense values alone passes none)."""
        path = Path(checkpoint_path)
        manifest = ckpt.read_meta(path, "checkpoint manifest")
        wanted = _tables_wanted(path, manifest["tables"], tables)
        n, m, k = manifest["num_shards"], self.num_shards, self.shard_index
        metas: dict[int, dict[str, Any]] = {}

        def meta(j: int) -> dict[str, Any]:
            if j not in metas:
                metas[j] = ckpt.read_meta(path / ckpt.shard_dir_name(j, n), f"shard {j} of {path}")
            return metas[j]

        # Old shard j holds ids ≡ j (mod n); some of them are ≡ k (mod m) only if j ≡ k (mod gcd(n, m)).
        sources = [j for j in range(n) if (j - k) % math.gcd(n, m) == 0]
        new_tables: dict[str, EmbeddingTable] = {}
        for name, config in wanted.items():
            table = EmbeddingTable.from_dict(config)
            for j in sources:
                entry = meta(j)["tables"].get(name)
                if entry is not None:
                    src = path / ckpt.shard_dir_name(j, n) / entry["dir"]
                    table.restore(str(src), shard=None if n == m else (k, m))
            new_tables[name] = table
        new_dense: dict[str, DenseVariable] = {}
        for name, entry in manifest["dense"].items():
            if dense_owner(name, m) != k:
                continue
            j = entry["shard"]
            src = path / ckpt.shard_dir_name(j, n) / meta(j)["dense"][name]["dir"]
            new_dense[name] = DenseVariable(EmbeddingTable.load(str(src)), tuple(entry["shape"]))
        with self._lock:
            stale = sorted(set(self.tables) - set(new_tables))
            if stale:
                log.warning("tables %s are not in checkpoint %s and keep their current state", stale, path)
            self.tables.update(new_tables)
            self.dense = {n_: v for n_, v in self.dense.items() if n_ not in new_dense} | new_dense
            if k == 0:
                self._global_step = int(manifest["global_step"])
            self.restored_from = str(path)
        log.info("restored %s (written by %d shards) onto shard %d of %d: %s", path, n, k, m,
                 {name: t.size for name, t in new_tables.items()})
        return {"rows": {name: int(t.size) for name, t in new_tables.items()}, "dense": sorted(new_dense),
                "global_step": int(manifest["global_step"])}


def _tables_wanted(path: Path, configs: dict[str, Any], tables: Collection[str] | None) -> dict[str, Any]:
    """The manifest's table configs to restore: all of them, or exactly `tables` (each must exist)."""
    if tables is None:
        return configs
    unknown = sorted(set(tables) - set(configs))
    if unknown:
        raise PSNotFound(f"checkpoint {path} has no tables {unknown} (has {sorted(configs)})")
    return {name: config for name, config in configs.items() if name in tables}
