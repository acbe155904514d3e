"""`<export_base>/ExportSaverListenerState`: the exports a listener made (text `ServingModelState`)."""
from __future__ import annotations

import os
from pathlib import Path

from google.protobuf import text_format

from protos.export_pb2 import ServingModelState
from ps.persist.atomic_files import fsync_dir, write_file_synced

STATE_FILE = "ExportSaverListenerState"


def get_export_saver_listener_state(export_dir_base: str | os.PathLike) -> ServingModelState:
    """The recorded state; empty when the file does not exist."""
    path = Path(export_dir_base) / STATE_FILE
    state = ServingModelState()
    if path.is_file():
        try:
            text_format.Merge(path.read_text(), state)
        except text_format.ParseError as exc:
            raise ValueError(f"{path}: not a ServingModelState text proto ({exc})") from None
    return state


def overwrite_export_saver_listener_state(export_dir_base: str | os.PathLike, state: ServingModelState) -> None:
    """Write to `<file>-tmp` (synced), rename over the file, sync the directory."""
    base = Path(export_dir_base)
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f"{STATE_FILE}-tmp"
    write_file_synced(tmp, text_format.MessageToString(state).encode())
    os.replace(tmp, base / STATE_FILE)
    fsync_dir(base)
