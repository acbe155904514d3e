"""Make numba's OpenMP workers sleep, not spin, between parallel kernels.

libgomp's default lets idle workers spin for a while after each parallel region. On a host whose
cores are shared (the client, the gRPC threads, other shards), the spinning worker takes the CPU the
gRPC threads need (docs/design-notes.md: a Lookup's mean latency grows many times over); passive
workers cost no more than a single kernel thread and still use both cores when they are free. libgomp
reads the variable once, when numba first launches its thread pool, so it must be set before the first
parallel kernel runs in the process.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def passive_kernel_threads() -> bool:
    """Set ENV unless the environment chose otherwise; False (with a warning) if it is already too late."""
    from numba.np.ufunc import parallel

    if all(k in os.environ for k in ENV):
        return True
    if parallel._is_initialized:
        log.warning("numba's thread pool already started: set %s before the first parallel kernel",
                    ", ".join(f"{k}={v}" for k, v in ENV.items()))
        return False
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    return True
