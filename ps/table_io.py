"""Table checkpoint files: row arrays in chunk files plus the admission sketch, under a checksummed manifest.

Layout of a table directory: `rows-NNNNN.bin` (each holds every per-row array for a contiguous range of
rows, back to back, in the order of the manifest's "arrays" list), `admission.bin`, and `MANIFEST.json`
written last. The whole directory is staged under a temporary name and renamed into place
(ps.atomic_files).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ps.atomic_files import CorruptCheckpointError, read_manifest, staged_directory, write_file_synced, write_manifest

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
    spec = [{"name": name, "dtype": np.dtype(dt).str, "shape": list(shape)} for name, dt, shape in layout]
    chunks, digests = [], {}
    with staged_directory(directory) as tmp:
        for c, start in enumerate(range(0, max(n, 1), rows_per_chunk)):
            stop = min(n, start + rows_per_chunk)
            name = f"rows-{c:05d}.bin"
            got = read_rows(start, stop)
            parts = [np.ascontiguousarray(got[entry["name"]], np.dtype(entry["dtype"])) for entry in spec]
            digests[name] = write_file_synced(tmp / name, parts)
            chunks.append({"file": name, "rows": stop - start})
        digests["admission.bin"] = write_file_synced(tmp / "admission.bin", np.ascontiguousarray(sketch))
        payload = {"format": FORMAT, "version": VERSION, "rows": n, "arrays": spec, "chunks": chunks,
                   "sketch": {"dtype": sketch.dtype.str, "shape": list(sketch.shape)}, **final_meta()}
        write_manifest(tmp, payload, digests)


def load_arrays(directory: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray], np.ndarray]:
    """Verify and read a checkpoint: returns (manifest payload, per-row arrays, admission sketch)."""
    directory = Path(directory)
    payload = read_manifest(directory)
    if payload.get("format") != FORMAT or payload.get("version") != VERSION:
        raise CorruptCheckpointError(
            f"{directory}: not a table checkpoint of format {FORMAT} v{VERSION} "
            f"(found {payload.get('format')!r} v{payload.get('version')!r})")
    layout = payload["arrays"]
    parts: dict[str, list[np.ndarray]] = {spec["name"]: [] for spec in layout}
    for chunk in payload["chunks"]:
        data = (directory / chunk["file"]).read_bytes()
        offset = 0
        for spec in layout:
            name = spec["name"]
            dtype = np.dtype(spec["dtype"])
            count = chunk["rows"] * int(np.prod(spec["shape"], dtype=np.int64))
            if offset + count * dtype.itemsize > len(data):
                raise CorruptCheckpointError(f"{directory / chunk['file']}: too short for array {name!r}")
            parts[name].append(np.frombuffer(data, dtype, count, offset).reshape([chunk["rows"]] + spec["shape"]))
            offset += count * dtype.itemsize
        if offset != len(data):
            raise CorruptCheckpointError(f"{directory / chunk['file']}: {len(data) - offset} unexpected trailing bytes")
    arrays = {name: np.concatenate(p) if len(p) > 1 else p[0] for name, p in parts.items()}
    if any(len(a) != payload["rows"] for a in arrays.values()):
        raise CorruptCheckpointError(f"{directory}: row count differs from the manifest's {payload['rows']}")
    spec = payload["sketch"]
    sketch = np.fromfile(directory / "admission.bin", np.dtype(spec["dtype"]))
    if sketch.size != int(np.prod(spec["shape"])):
        raise CorruptCheckpointError(f"{directory / 'admission.bin'}: wrong size")
    return payload, arrays, sketch.reshape(spec["shape"])
