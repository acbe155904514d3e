"""The gRPC server around a servicer, in one of two models chosen on the command line.

- `sync`: `grpc.server` with a thread pool. Handlers block in numba kernels that release the GIL,
  so several requests make progress at once.
- `aio`: `grpc.aio` on a uvloop event loop, the same synchronous handlers run in a migration thread
  pool (the store is synchronous; the loop only does the I/O).

Why `sync` is the default: `benchmarks/ps_bench.py` runs both models on the same workload in one run.
The bare transport is the same (gRPC echo of a Lookup's bytes: ~1,900–2,200 calls/s either way).
With real handlers, six runs on this shared 2-core machine (load 4–7 from other jobs) gave aio/sync
ratios of 0.13–0.95 for Lookup and 0.16–1.22 for ApplyGradients; the last three runs (after the
payload-copy reductions) 0.95, 0.78, 0.94 and 1.22, 0.71, 1.06. Three later runs on a quiet machine
gave 1.29, 0.76, 1.00 for Lookup and 1.19, 0.89, 1.05 for ApplyGradients. aio was never reliably
faster and in earlier runs far slower (plausibly the event-loop thread and the handler thread trading
the GIL at every numba kernel entry/exit; the sync server's threads wait in C without it).
So: the simpler model with one kind of thread and a plain shutdown.

Processes per host: one shard per process. The same benchmark's 2 shards × 2 client threads reached
0.50–0.83× the 1 shard × 1 thread rate here, because on 2 cores the client and both shards compete
for the same CPUs; several shard processes per host pay off only where the host has cores to spare.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc

from ps.config import ServerConfig

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
) -> None:
    """Bind `config.address` (port 0 = any), call `on_ready(port)`, serve until `stop` is set, drain in-flight
    calls for at most `config.grace_s`."""
    model, threads, grace_s, address = config.server_model, config.threads, config.grace_s, config.address
    options = grpc_options(config.max_message_bytes)
    if model == "sync":
        server = grpc.server(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ps-rpc"),
                             handlers=handlers, options=options)
        port = _bind(server, address)
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
        port = _bind(server, address)
        await server.start()
        if on_ready:
            on_ready(port)
        while not await asyncio.to_thread(stop.wait, 0.5):
            pass
        log.info("stopping: no new calls, draining in-flight ones (grace %.0fs)", grace_s)
        await server.stop(grace_s)

    uvloop.run(run())


def _bind(server, address: str) -> int:
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc's "Failed to bind"
        raise OSError(f"cannot bind {address}: port in use or address not available") from exc
    if port == 0:
        raise OSError(f"cannot bind {address}: port in use or address not available")
    return port
