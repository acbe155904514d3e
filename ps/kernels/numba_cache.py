"""Where numba keeps compiled kernels: a user cache directory, never the checkout.

numba's default cache sits beside the sources (`ps/__pycache__`), i.e. inside the checkout or the
installed package. Unless `NUMBA_CACHE_DIR` is set, we use `$XDG_CACHE_HOME/monolith/numba` (by
default `~/.cache/monolith/numba`, beside the MovieLens cache). numba reads the variable when it is
imported, so `configure` runs when the `ps` package is imported, and re-reads numba's configuration if
numba was imported earlier.

With an empty cache, the first lookups and updates of a process compile the kernels they use, which
makes the first steps slow; `note_cold_cache` says so once per process.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "NUMBA_CACHE_DIR"
_noted = threading.Event()


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "monolith" / "numba"


def configure() -> Path:
    """Point numba's cache at the user cache directory unless the environment chose one."""
    if not os.environ.get(ENV):
        os.environ[ENV] = str(default_cache_dir())
    if "numba.core.config" in sys.modules:
        from numba.core import config

        if os.environ[ENV] != config.CACHE_DIR:
            config.reload_config()
    return Path(os.environ[ENV])


def note_cold_cache() -> None:
    """Log once per process when no kernel of this package is cached yet (the first steps will be slow)."""
    if _noted.is_set():
        return
    _noted.set()
    cache = Path(os.environ.get(ENV) or default_cache_dir())
    if not any(cache.rglob("hash_index.*.nbi")):
        log.info("numba kernel cache %s is empty: the first lookups and updates compile their kernels "
                 "(once, tens of seconds); later runs load them from the cache", cache)
