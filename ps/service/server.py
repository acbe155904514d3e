"""The gRPC server around a servicer, in one of two models chosen on the command line.

- `sync`: `grpc.server` with a thread pool. Handlers block in numba kernels that release the GIL,
  so several requests make progress at once.
- `aio`: `grpc.aio` on a uvloop event loop, the same synchronous handlers run in a migration thread
  pool (the store is synchronous; the loop only does the I/O).

Why `sync` is the default: `benchmarks/ps_bench.py` runs both models on the same workload in one run
(`benchmarks/RESULTS.md`; the history of those ratios is in docs/design-notes.md). The bare transport
costs the same in both; with real handlers `aio` was never reliably faster and at times far slower
(plausibly the event-loop thread and the handler thread trading the GIL at every numba kernel entry and
exit; the sync server's threads wait in C without it). So: the simpler model with one kind of thread
and a plain shutdown.

Processes per host: one shard per process. Several shard processes per host pay off only where the
host has cores to spare: on 2 cores the client and the shards compete for the same CPUs.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc

from ps.config import ServerConfig
from services.transport_security import TransportSecurity

log = logging.getLogger(__name__)


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),  # a second shard on the same port must fail, not share it
    ]


def serve(
    handlers: Sequence[grpc.GenericRpcHandler],
    config: ServerConfig,
    *,
    stop: threading.Event,
    on_ready: Callable[[int], None] | None = None,
    security: TransportSecurity | None = None,
    name: str = "ps",
) -> None:
    """Bind `config.address` (port 0 = any), call `on_ready(port)`, serve until `stop` is set, drain in-flight
    calls for at most `config.grace_s`. `security` (default: none) adds TLS and the token check; `name` is
    the server's name in the refusal metrics."""
    model, threads, grace_s, address = config.server_model, config.threads, config.grace_s, config.address
    options = grpc_options(config.max_message_bytes)
    security = security or TransportSecurity()
    handlers = security.server_handlers(handlers, name)
    if model == "sync":
        server = grpc.server(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ps-rpc"),
                             handlers=handlers, options=options)
        port = _bind(server, address, security)
        server.start()
        if on_ready:
            on_ready(port)
        while not stop.wait(0.5):
            pass
        log.info("stopping: no new calls, draining in-flight ones (grace %.0fs)", grace_s)
        server.stop(grace_s).wait()
        return

    import uvloop

    async def run() -> None:
        server = grpc.aio.server(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ps-rpc"),
                                 handlers=handlers, options=options)
        port = _bind(server, address, security)
        await server.start()
        if on_ready:
            on_ready(port)
        while not await asyncio.to_thread(stop.wait, 0.5):
            pass
        log.info("stopping: no new calls, draining in-flight ones (grace %.0fs)", grace_s)
        await server.stop(grace_s)

    uvloop.run(run())


def _bind(server, address: str, security: TransportSecurity) -> int:
    try:
        port = security.add_port(server, address)
    except RuntimeError as exc:  # grpc's "Failed to bind"
        raise OSError(f"cannot bind {address}: port in use or address not available") from exc
    if port == 0:
        raise OSError(f"cannot bind {address}: port in use or address not available")
    return port
