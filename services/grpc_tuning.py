"""Run gRPC's TCP endpoints on its older I/O manager: a small unary call then costs about 40% less CPU in
the client and in the server, and a training step makes four or more such calls (docs/design-notes.md).

gRPC reads `GRPC_EXPERIMENTS` once, when the process first initializes its core (the first channel or
server, not the import), so `tune_grpc` must run before that: the PS client and
server call it before they make theirs (a process whose first channel is another one keeps gRPC's
default). A `GRPC_EXPERIMENTS` already in the environment is left as it is; child processes inherit it.
"""
from __future__ import annotations

import os

EXPERIMENTS_VAR = "GRPC_EXPERIMENTS"
EXPERIMENTS = "-event_engine_listener,-event_engine_client"
"""The EventEngine endpoints for accepted (listener) and outgoing (client) connections, off: on loopback
with small messages they took a few more thread wake-ups and about 0.1 ms more CPU per call on each side."""


def tune_grpc() -> None:
    """Set `GRPC_EXPERIMENTS` unless the environment already sets it (no effect once gRPC is initialized)."""
    os.environ.setdefault(EXPERIMENTS_VAR, EXPERIMENTS)
