"""The process-wide task context: which role and index this process plays in the cluster."""
from __future__ import annotations

import contextlib
from typing import Any, NamedTuple


class NativeTaskContext(NamedTuple):
    num_ps: int
    ps_index: int
    num_workers: int
    worker_index: int
    model_name: str
    sync_backend: Any
    server_type: str


_CTX: NativeTaskContext | None = None


@contextlib.contextmanager
def with_ctx(ctx: NativeTaskContext):
    """Install `ctx`; on exit restore the previous context, but an outermost exit keeps `ctx` (as Monolith does)."""
    global _CTX
    old_ctx = _CTX
    _CTX = ctx
    try:
        yield
    finally:
        if old_ctx is not None:
            _CTX = old_ctx


def get() -> NativeTaskContext:
    if _CTX is None:
        return NativeTaskContext(num_ps=0, ps_index=0, num_workers=1, worker_index=0, model_name="",
                                 sync_backend=None, server_type="")
    return _CTX
