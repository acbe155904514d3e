"""Logging where every record carries the process's role and shard/index.

Multi-process runs interleave logs from many processes; `[ps:1]` in every line is what makes them
readable. Call `configure(role, index)` once at process start-up.
"""
from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname).1s [%(role)s:%(index)s] %(name)s: %(message)s"


class _Identity:
    def __init__(self) -> None:
        self.role = os.environ.get("MONOLITH_ROLE", "main")
        self.index: int | str = os.environ.get("MONOLITH_INDEX", "0")
        self.factory_installed = False


_identity = _Identity()


def _install_record_attributes() -> None:
    """Every record made in this process carries `role` and `index`, whichever handler formats it."""
    if _identity.factory_installed:
        return
    make = logging.getLogRecordFactory()

    def record(*args, **kwargs) -> logging.LogRecord:
        rec = make(*args, **kwargs)
        rec.role, rec.index = _identity.role, _identity.index
        return rec

    logging.setLogRecordFactory(record)
    _identity.factory_installed = True


def configure(role: str, index: int | str = 0, level: int | str | None = None) -> None:
    """Name this process `role`/`index` in every log record; safe to call again.

    A process whose root logger has no handler yet (a role's own process) gets a stderr handler with the
    role in its format. A host that configured logging before (an application or a test runner calling
    `launch.cli.main` in-process) keeps its handlers and gets no second one, which would print every line
    twice; its formatters may use `%(role)s` and `%(index)s`."""
    _identity.role, _identity.index = role, index
    _install_record_attributes()
    root = logging.getLogger()
    root.setLevel(level or os.environ.get("MONOLITH_LOG_LEVEL", "INFO"))
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(handler)
