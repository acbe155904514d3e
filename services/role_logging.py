"""Logging where every record carries the process's role and shard/index.

Multi-process runs interleave logs from many processes; `[ps:1]` in every line is what makes them
readable. Call `configure(role, index)` once at process start-up.
"""
from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname).1s [%(role)s:%(index)s] %(name)s: %(message)s"


class _RoleFilter(logging.Filter):
    def __init__(self, role: str, index: int | str) -> None:
        super().__init__()
        self.role = role
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = getattr(record, "role", self.role)
        record.index = getattr(record, "index", self.index)
        return True


_filter = _RoleFilter(os.environ.get("MONOLITH_ROLE", "main"), os.environ.get("MONOLITH_INDEX", "0"))


def configure(role: str, index: int | str = 0, level: int | str | None = None) -> None:
    """Install a stderr handler whose records name `role` and `index`; safe to call again."""
    _filter.role, _filter.index = role, index
    level = level or os.environ.get("MONOLITH_LOG_LEVEL", "INFO")
    root = logging.getLogger()
    root.setLevel(level)
    for handler in root.handlers:
        if getattr(handler, "_monolith", False):
            handler.addFilter(_filter)
            return
    handler = logging.StreamHandler(sys.stderr)
    handler._monolith = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(_filter)
    root.addHandler(handler)
