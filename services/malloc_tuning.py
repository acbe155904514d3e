"""Keep glibc from returning every multi-MiB RPC buffer to the OS: otherwise each call page-faults its
buffers in again and RPC throughput drops severalfold (docs/design-notes.md).

The Makefile and our launchers export MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_; a process
started any other way gets the same settings through mallopt(3) here.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 64 * 1024 * 1024
TRIM_THRESHOLD = 256 * 1024 * 1024
ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc() -> bool:
    """Apply the thresholds unless the environment already set them; False if not glibc."""
    if all(k in os.environ for k in ENV):
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = all(libc.mallopt(opt, value) == 1
                 for opt, value in ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    except (OSError, AttributeError):
        ok = False
    if not ok:
        log.warning("could not set malloc thresholds; large RPCs may page-fault (set %s)", ", ".join(ENV))
    return ok
