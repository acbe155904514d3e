"""Table checkpoint files: row arrays in chunk files plus the admission sketch, under a checksummed manifest.

Layout of a table directory: `rows-NNNNN.bin` (each holds every per-row array for a contiguous range of
rows, back to back, in the order of the manifest's "arrays" list), `admission.bin`, and `MANIFEST.json`
written last. The whole directory is staged under a temporary name and renamed into place
(ps.persist.atomic_files).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ps.persist.atomic_files import (
    CorruptCheckpointError,
    read_manifest,
    staged_directory,
    write_file_synced,
    write_manifest,
)

FORMAT = "monolith-ps-embedding-table"
VERSION = 1
_CHUNK_BYTES = 64 << 20


def save_rows(directory: str | os.PathLike, layout: list[tuple[str, np.dtype, tuple[int, ...]]], n: int,
              read_rows: Callable[[int, int], dict[str, np.ndarray]], sketch: np.ndarray,
              final_meta: Callable[[], dict]) -> None:
    """Write n rows of the per-row arrays in `layout` ((name, dtype, per-row shape)), fetched one chunk file at
    a time by `read_rows(lo, hi)`, so a save never holds more than one chunk beyond the table itself.
    `final_meta()` is called after the last chunk (for values that may move while rows are read)."""
    row_bytes = sum(np.dtype(dt).itemsize * int(np.prod(shape, dtype=np.int64)) for _, dt, shape in layout)
    rows_per_chunk = max(1, _CHUNK_BYTES // max(1, row_bytes))
    spec: list[dict[str, Any]] = [{"name": name, "dtype": np.dtype(dt).str, "shape": list(shape)}
                                  for name, dt, shape in layout]
    chunks, digests = [], {}
    with staged_directory(directory) as tmp:
        for c, start in enumerate(range(0, max(n, 1), rows_per_chunk)):
            stop = min(n, start + rows_per_chunk)
            name = f"rows-{c:05d}.bin"
            got = read_rows(start, stop)
            parts = [np.ascontiguousarray(got[entry["name"]], np.dtype(entry["dtype"])) for entry in spec]
            digests[name] = write_file_synced(tmp / name, parts)
            chunks.append({"file": name, "rows": stop - start})
        digests["admission.bin"] = write_file_synced(tmp / "admission.bin", [np.ascontiguousarray(sketch)])
        payload = {"format": FORMAT, "version": VERSION, "rows": n, "arrays": spec, "chunks": chunks,
                   "sketch": {"dtype": sketch.dtype.str, "shape": list(sketch.shape)}, **final_meta()}
        write_manifest(tmp, payload, digests)


@dataclass
class SavedRows:
    """A verified table checkpoint whose rows are read one chunk file at a time (bounded memory)."""

    directory: Path
    payload: dict
    sketch: np.ndarray

    @classmethod
    def open(cls, directory: str | os.PathLike) -> SavedRows:
        """Check the manifest, every file's checksum, the format and each chunk file's size for its rows."""
        directory = Path(directory)
        payload = read_manifest(directory)
        if payload.get("format") != FORMAT or payload.get("version") != VERSION:
            raise CorruptCheckpointError(
                f"{directory}: not a table checkpoint of format {FORMAT} v{VERSION} "
                f"(found {payload.get('format')!r} v{payload.get('version')!r})")
        saved = cls(directory, payload, np.empty(0))
        if sum(c["rows"] for c in payload["chunks"]) != payload["rows"]:
            raise CorruptCheckpointError(f"{directory}: chunk rows do not add up to the manifest's {payload['rows']}")
        row_bytes = saved._row_bytes
        for chunk in payload["chunks"]:
            path = directory / chunk["file"]
            size, want = path.stat().st_size, chunk["rows"] * row_bytes
            if size != want:
                raise CorruptCheckpointError(f"{path}: {size} bytes, {want} expected for {chunk['rows']} rows")
        spec = payload["sketch"]
        sketch = np.fromfile(directory / "admission.bin", np.dtype(spec["dtype"]))
        if sketch.size != int(np.prod(spec["shape"])):
            raise CorruptCheckpointError(f"{directory / 'admission.bin'}: wrong size")
        saved.sketch = sketch.reshape(spec["shape"])
        return saved

    @property
    def layout(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        return {e["name"]: (np.dtype(e["dtype"]), tuple(e["shape"])) for e in self.payload["arrays"]}

    @property
    def _row_bytes(self) -> int:
        return sum(dt.itemsize * int(np.prod(shape, dtype=np.int64)) for dt, shape in self.layout.values())

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        """Each chunk file's per-row arrays (read-only views of that file's bytes)."""
        layout = self.layout
        for chunk in self.payload["chunks"]:
            data = (self.directory / chunk["file"]).read_bytes()
            out, offset = {}, 0
            for name, (dtype, shape) in layout.items():
                count = chunk["rows"] * int(np.prod(shape, dtype=np.int64))
                out[name] = np.frombuffer(data, dtype, count, offset).reshape((chunk["rows"], *shape))
                offset += count * dtype.itemsize
            yield out

    def ids(self) -> np.ndarray:
        """Every saved id, in row order, reading only the ids (the first array of each chunk file)."""
        names = list(self.layout)
        if names[0] != "ids":
            return np.concatenate([c["ids"] for c in self.chunks()] or [np.empty(0, np.int64)])
        dtype = self.layout["ids"][0]
        parts = []
        for chunk in self.payload["chunks"]:
            with open(self.directory / chunk["file"], "rb") as f:
                parts.append(np.frombuffer(f.read(chunk["rows"] * dtype.itemsize), dtype))
        return np.concatenate(parts) if parts else np.empty(0, dtype)


def load_arrays(directory: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray], np.ndarray]:
    """Verify and read a whole checkpoint: (manifest payload, per-row arrays, admission sketch)."""
    saved = SavedRows.open(directory)
    parts = list(saved.chunks())
    arrays = {name: np.concatenate([p[name] for p in parts]) if parts else np.empty((0, *shape), dtype)
              for name, (dtype, shape) in saved.layout.items()}
    return saved.payload, arrays, saved.sketch
