"""`ExportSaverListener`: after every checkpoint the chief saves, export it and forget old exports.

Each export is recorded in its base's `ExportSaverListenerState`; an export whose global step is no
longer among the kept checkpoints (nor the exempt ones) is deleted with its entry, so exports follow
checkpoint retention. With `dense_only`, the steps of the full checkpoints in the model directory two
levels above the export base are kept too (the original's rule for dense-only exports).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path

from protos.export_pb2 import ServingEntry
from ps.persist.checkpoint import complete_checkpoints
from worker.export.export_state import get_export_saver_listener_state, overwrite_export_saver_listener_state

log = logging.getLogger(__name__)

_STEP = re.compile(r"ckpt-(\d+)$")


def checkpoint_steps(model_dir: str | os.PathLike) -> set[int]:
    """Steps of the complete checkpoints under `model_dir`."""
    return {step for step, _path in complete_checkpoints(model_dir)}


def get_global_step(checkpoint_path: str) -> int:
    match = _STEP.search(str(checkpoint_path).rstrip("/"))
    if match is None:
        raise ValueError(f"{checkpoint_path!r} is not a checkpoint path (ending in ckpt-<step>)")
    return int(match.group(1))


class ExportSaverListener:
    def __init__(self, save_path: str, serving_input_receiver_fn, exporter, exempt_checkpoint_paths=None,
                 dense_only: bool = False) -> None:
        self._save_path = save_path
        self._serving_input_receiver_fn = serving_input_receiver_fn
        self._exporter = exporter
        self._exempt_checkpoint_steps = {get_global_step(p) for p in exempt_checkpoint_paths or ()}
        self._dense_only = dense_only
        self._last_metric_warning = 0.0

    def after_save(self, global_step_value: int, checkpoint_path: str | None = None) -> list[str]:
        checkpoint_path = checkpoint_path or os.path.join(self._save_path, f"ckpt-{global_step_value}")
        result = self._exporter.export_saved_model(self._serving_input_receiver_fn, checkpoint_path)
        if isinstance(result, dict):
            export_dirs = list(result.values())
        elif isinstance(result, (list, tuple)):
            export_dirs = list(result)
        else:
            export_dirs = [result]
        export_dirs = [d.decode() if isinstance(d, bytes) else str(d) for d in export_dirs]
        for export_dir in export_dirs:
            self._add_entry_to_state(export_dir, global_step_value)
            self._maybe_delete_old_entries(export_dir)
        return export_dirs

    def _add_entry_to_state(self, export_dir: str, global_step_value: int) -> None:
        base = os.path.dirname(export_dir.rstrip("/"))
        state = get_export_saver_listener_state(base)
        state.entries.append(ServingEntry(export_dir=export_dir, global_step=int(global_step_value)))
        overwrite_export_saver_listener_state(base, state)
        self._update_metrics(base, os.path.basename(export_dir.rstrip("/")))

    def _maybe_delete_old_entries(self, export_dir: str) -> None:
        base = os.path.dirname(export_dir.rstrip("/"))
        state = get_export_saver_listener_state(base)
        existing = checkpoint_steps(self._save_path) | self._exempt_checkpoint_steps
        if self._dense_only:
            existing |= checkpoint_steps(Path(base).parent.parent)
        kept = [e for e in state.entries if e.global_step in existing]
        for entry in state.entries:
            if entry.global_step not in existing:
                log.info("deleting export %s (checkpoint %d is gone)", entry.export_dir, entry.global_step)
                shutil.rmtree(entry.export_dir, ignore_errors=True)
        if len(kept) != len(state.entries):
            del state.entries[:]
            state.entries.extend(kept)
            overwrite_export_saver_listener_state(base, state)

    def _update_metrics(self, export_dir_base: str, version: str) -> None:
        try:
            from services.metrics.client import MetricClient

            MetricClient().emit_store("export_models.latest_version", int(version.split(".")[0]),
                                      {"model_name": os.path.basename(export_dir_base)})
        except Exception as exc:  # metrics must never fail an export
            if time.monotonic() - self._last_metric_warning > 1200:
                self._last_metric_warning = time.monotonic()
                log.warning("could not report export_models.latest_version: %s", exc)
