"""Serving the process's metrics at `/metrics` so Prometheus can scrape every role."""
from __future__ import annotations

import logging
from typing import Any

from prometheus_client import REGISTRY, start_http_server

from services.transport_security import TransportSecurity

log = logging.getLogger(__name__)

_servers: dict[int, Any] = {}


def metrics_url(addr: str, port: int, tls: bool = False) -> str:
    host = f"[{addr}]" if ":" in addr else addr
    return f"{'https' if tls else 'http'}://{host}:{port}/metrics"


def start_metrics_server(port: int = 0, addr: str = "127.0.0.1", security: TransportSecurity | None = None) -> int:
    """Serve the default registry on `addr:port` (0 = a free port) in a daemon thread; return the port.

    With TLS configured (`security`, default: this process's environment) it serves HTTPS, and with a CA
    only to scrapers presenting a certificate signed by it."""
    security = TransportSecurity.from_environ() if security is None else security
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY, **security.metrics_server_kwargs())
    bound = server.server_port
    _servers[bound] = server
    log.info("serving metrics at %s", metrics_url(addr, bound, security.tls))
    return bound


def stop_metrics_server(port: int) -> None:
    """Stop a server started by `start_metrics_server` (processes may also just exit)."""
    server = _servers.pop(port, None)
    if server is None:
        raise KeyError(f"no metrics server of this process listens on port {port}")
    server.shutdown()
    server.server_close()
