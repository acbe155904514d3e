"""Many named tables in one store, and Monolith-style merging of identically configured slots.

`MultiTypeHashTable`: one EmbeddingTable per name (sorted order), operations take {name: array} dicts.
`MergedMultiTypeHashTable`: slots whose normalized configs are equal share one table named by the MD5 of
their sorted slot names joined by "," (Monolith's stable merged names); merged slots share one id space.
Old `fc_slot_N` names get the restore alias computed from `slot_N`, as Monolith does.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ps.persist.atomic_files import read_manifest, staged_directory, write_manifest
from ps.store.table import EmbeddingTable

log = logging.getLogger(__name__)
_OLD_SLOT_NAME = re.compile(r"^fc_slot_[0-9]*$")
_FORMAT = "monolith-ps-multi-table"


def merged_table_name(slots: Iterable[str]) -> str:
    return hashlib.md5(",".join(sorted(slots)).encode()).hexdigest()


def restore_aliases(slots: Iterable[str]) -> list[str]:
    """Extra names to restore a merged table from: the name it had before `fc_slot_N` became `slot_N`."""
    slots = sorted(slots)
    renamed = [s[3:] if _OLD_SLOT_NAME.match(s) else s for s in slots]
    old = merged_table_name(renamed)
    return [old] if old != merged_table_name(slots) else []


def config_key(config: dict) -> str:
    """Slots merge iff these strings are equal: the normalized config, so spelled-out defaults don't matter."""
    return json.dumps(EmbeddingTable.from_dict(config).config, sort_keys=True)


def _check_names(kind: str, given: Iterable[str], known: dict) -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise KeyError(f"unknown {kind} {unknown}; known: {sorted(known)}")


class MultiTypeHashTable:
    def __init__(self, name_to_config: dict[str, dict],
                 factory: Callable[[dict], EmbeddingTable] = EmbeddingTable.from_dict) -> None:
        self.tables = {name: factory(name_to_config[name]) for name in sorted(name_to_config)}
        self.restore_names: dict[str, list[str]] = {name: [] for name in self.tables}

    @property
    def names(self) -> list[str]:
        return list(self.tables)

    @property
    def dims(self) -> dict[str, int]:
        return {name: t.dim for name, t in self.tables.items()}

    def lookup(self, name_to_ids: dict, dtype=np.float32) -> dict[str, np.ndarray]:
        _check_names("table", name_to_ids, self.tables)
        return {name: self.tables[name].lookup(ids, dtype) for name, ids in name_to_ids.items()}

    def _each(self, method: str, name_to_ids: dict, name_to_values: dict, **kw) -> None:
        _check_names("table", name_to_ids, self.tables)
        if set(name_to_ids) != set(name_to_values):
            raise ValueError(f"ids given for {sorted(name_to_ids)} but values for {sorted(name_to_values)}")
        for name in sorted(name_to_ids):
            getattr(self.tables[name], method)(name_to_ids[name], name_to_values[name], **kw)

    def assign(self, name_to_ids: dict, name_to_values: dict, update_time: int = 0) -> None:
        self._each("assign", name_to_ids, name_to_values, update_time=update_time)

    def assign_add(self, name_to_ids: dict, name_to_values: dict, update_time: int = 0) -> None:
        self._each("assign_add", name_to_ids, name_to_values, update_time=update_time)

    def apply_gradients(self, name_to_ids: dict, name_to_grads: dict, global_step: int = 0, update_time: int = 0,
                        name_to_learning_rates: dict | None = None) -> None:
        _check_names("table", name_to_ids, self.tables)
        lrs = name_to_learning_rates or {}
        _check_names("table", lrs, self.tables)
        if set(name_to_ids) != set(name_to_grads):
            raise ValueError(f"ids given for {sorted(name_to_ids)} but grads for {sorted(name_to_grads)}")
        for name in sorted(name_to_ids):
            self.tables[name].apply_gradients(name_to_ids[name], name_to_grads[name], global_step=global_step,
                                              update_time=update_time, learning_rates=lrs.get(name))

    def reinitialize(self, name: str, ids, update_time: int = 0) -> np.ndarray:
        """Per id: 1 existed (re-initialised), 0 created, -1 not admitted or `name` is not a table."""
        if name not in self.tables:
            return np.full(len(np.asarray(ids)), -1, np.int32)
        return self.tables[name].reinitialize(ids, update_time)

    def save(self, directory: str | os.PathLike) -> None:
        """One sub-directory per table plus a manifest naming them, published atomically as a whole."""
        with staged_directory(directory) as tmp:
            for name, table in self.tables.items():
                table.save(tmp / name)
            write_manifest(tmp, {"format": _FORMAT, "tables": list(self.tables)})

    def restore(self, directory: str | os.PathLike) -> dict[str, str | None]:
        """Restore every table found under its name or a restore alias; others are left as they are.

        Returns {table: name restored from, or None}. Tables only in the checkpoint are skipped.
        """
        directory = Path(directory)
        saved = set(read_manifest(directory)["tables"])
        used = {}
        for name, table in self.tables.items():
            source = next((n for n in [name] + self.restore_names[name] if n in saved), None)
            if source is None:
                log.warning("table %s (aliases %s) not in checkpoint %s", name, self.restore_names[name], directory)
            else:
                table.restore(directory / source, clear=True)
            used[name] = source
        return used


class MergedMultiTypeHashTable:
    def __init__(self, slot_to_config: dict[str, dict],
                 factory: Callable[[dict], EmbeddingTable] = EmbeddingTable.from_dict) -> None:
        groups: dict[str, list[str]] = {}
        for slot in sorted(slot_to_config):
            groups.setdefault(config_key(slot_to_config[slot]), []).append(slot)
        self.slot_to_merged: dict[str, str] = {}
        self.merged_slots: dict[str, list[str]] = {}
        merged_configs = {}
        for slots in groups.values():
            merged = merged_table_name(slots)
            self.merged_slots[merged] = slots
            merged_configs[merged] = slot_to_config[slots[0]]
            for slot in slots:
                self.slot_to_merged[slot] = merged
        self.store = MultiTypeHashTable(merged_configs, factory)
        for merged, slots in self.merged_slots.items():
            self.store.restore_names[merged] = restore_aliases(slots)

    @property
    def dims(self) -> dict[str, int]:
        return {slot: self.store.tables[m].dim for slot, m in self.slot_to_merged.items()}

    def _group(self, slot_to_ids: dict, slot_to_values: dict | None):
        _check_names("slot", slot_to_ids, self.slot_to_merged)
        if slot_to_values is not None and set(slot_to_ids) != set(slot_to_values):
            raise ValueError(f"ids given for {sorted(slot_to_ids)} but values for {sorted(slot_to_values)}")
        ids, values, sizes = {}, {}, {}
        for merged, slots in self.merged_slots.items():
            present = [s for s in slots if s in slot_to_ids]
            if not present:
                continue
            parts = [np.asarray(slot_to_ids[s]).reshape(-1) for s in present]
            sizes[merged] = [(s, len(p)) for s, p in zip(present, parts)]
            ids[merged] = np.concatenate(parts)
            if slot_to_values is not None:
                values[merged] = np.concatenate([np.asarray(slot_to_values[s]) for s in present])
        return ids, values, sizes

    def lookup(self, slot_to_ids: dict, dtype=np.float32) -> dict[str, np.ndarray]:
        ids, _, sizes = self._group(slot_to_ids, None)
        out = {}
        for merged, emb in self.store.lookup(ids, dtype).items():
            offset = 0
            for slot, n in sizes[merged]:
                out[slot] = emb[offset:offset + n]
                offset += n
        return out

    def assign(self, slot_to_ids: dict, slot_to_values: dict, update_time: int = 0) -> None:
        ids, values, _ = self._group(slot_to_ids, slot_to_values)
        self.store.assign(ids, values, update_time)

    def assign_add(self, slot_to_ids: dict, slot_to_values: dict, update_time: int = 0) -> None:
        ids, values, _ = self._group(slot_to_ids, slot_to_values)
        self.store.assign_add(ids, values, update_time)

    def apply_gradients(self, slot_to_ids: dict, slot_to_grads: dict, global_step: int = 0,
                        update_time: int = 0) -> None:
        ids, grads, _ = self._group(slot_to_ids, slot_to_grads)
        self.store.apply_gradients(ids, grads, global_step, update_time)

    def save(self, directory: str | os.PathLike) -> None:
        self.store.save(directory)

    def restore(self, directory: str | os.PathLike) -> dict[str, str | None]:
        return self.store.restore(directory)
