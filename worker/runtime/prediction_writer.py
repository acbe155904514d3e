"""Per-worker prediction files: `part-<worker:05d>` lines of output fields then predictions."""
from __future__ import annotations

import os
from typing import Any

import numpy as np


def _column(value: Any) -> list:
    if hasattr(value, "to_list"):
        return value.to_list()
    arr = np.asarray(value)
    if arr.ndim > 1 and arr.shape[-1] == 1:
        arr = arr.reshape(arr.shape[:-1])
    return list(arr)


def _format(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + " ".join(_format(v) for v in value) + "]"
    if isinstance(value, (np.floating, float)):
        return repr(float(value))
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


class PredictionWriter:
    def __init__(self, output_path: str, worker_index: int, output_fields: str | None, delimiter: str = "\t"):
        if not output_fields:
            raise ValueError("output_fields must name the features to write (comma-separated) when output_path "
                             "is set")
        self.fields = [f.strip() for f in output_fields.split(",") if f.strip()]
        self.delimiter = delimiter
        os.makedirs(output_path, exist_ok=True)
        self.path = os.path.join(output_path, f"part-{worker_index:05d}")
        self._fh = open(self.path, "w")  # noqa: SIM115 - stays open across write() calls until close()

    def write(self, features: dict[str, Any], predictions: Any) -> None:
        missing = [f for f in self.fields if f not in features]
        if missing:
            raise ValueError(f"output_fields {missing} are not features (features: {sorted(features)})")
        columns = [_column(features[f]) for f in self.fields]
        if isinstance(predictions, dict):
            columns += [_column(predictions[k]) for k in sorted(predictions)]
        elif isinstance(predictions, (list, tuple)):
            columns += [_column(p) for p in predictions]
        else:
            columns.append(_column(predictions))
        for row in zip(*columns):
            self._fh.write(self.delimiter.join(_format(v) for v in row) + "\n")

    def close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
