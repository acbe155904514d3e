"""Serving the process's metrics at `/metrics` so Prometheus can scrape every role."""
from __future__ import annotations

import logging
from typing import Any

from prometheus_client import REGISTRY, start_http_server

log = logging.getLogger(__name__)

_servers: dict[int, Any] = {}


def metrics_url(addr: str, port: int) -> str:
    host = f"[{addr}]" if ":" in addr else addr
    return f"http://{host}:{port}/metrics"


def start_metrics_server(port: int = 0, addr: str = "127.0.0.1") -> int:
    """Serve the default registry on `addr:port` (0 = a free port) in a daemon thread; return the port."""
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    bound = server.server_port
    _servers[bound] = server
    log.info("serving metrics at %s", metrics_url(addr, bound))
    return bound


def stop_metrics_server(port: int) -> None:
    """Stop a server started by `start_metrics_server` (processes may also just exit)."""
    server = _servers.pop(port, None)
    if server is None:
        raise KeyError(f"no metrics server of this process listens on port {port}")
    server.shutdown()
    server.server_close()
