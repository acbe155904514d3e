"""How the rest of a job learns that training is over: each worker reports its state on its MLP port.

A worker's launcher answers every connection on its port with one line — `waiting`, `running` or
`exited <code>` — and closes it. PS, dispatcher and data-worker launchers poll every worker (the
original's `join` semantics, made explicit): the job is over once every worker has said `exited 0`.
A worker that vanishes or exits non-zero is treated as restartable (a scheduler may bring it back), so
peers keep serving; whoever launched the job tears it down on failure. After a clean exit a worker
keeps answering `exited 0` until its peers are gone (bounded), so no peer misses the news.

With TLS configured (services/transport_security.py) the port speaks TLS (mutual with a CA); with a token
the caller first sends `<token>\n`, and a caller without it reads `unauthenticated`. Refusals are counted.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading

from services.mlp_env import split_addr
from services.transport_security import REFUSALS, TransportSecurity

log = logging.getLogger(__name__)


UNAUTHENTICATED = "unauthenticated"
_SERVER = "job-status"


class StatusServer:
    """Answers `<state>\\n` to every TCP connection on `port` from a daemon thread."""

    def __init__(self, port: int, host: str = "127.0.0.1", security: TransportSecurity | None = None) -> None:
        self.security = TransportSecurity.from_environ() if security is None else security
        self._tls = self.security.server_ssl_context()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host.strip("[]"), port))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.state = "waiting"
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="job-status", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        if self._tls is not None:
            try:
                conn = self._tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                REFUSALS.labels(_SERVER, "tls-handshake").inc()
                log.warning("job status: refused a TLS handshake: %s", exc)
                return
        with conn:
            if self.security.token is not None and not self.security.token_matches(_read_token(conn)):
                REFUSALS.labels(_SERVER, "wrong-token").inc()
                log.warning("job status: refused a caller without the right token")
                conn.sendall(f"{UNAUTHENTICATED}\n".encode())
                return
            conn.sendall(f"{self.state}\n".encode())

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self._sock.close()


def _read_line(conn: socket.socket, limit: int = 4096) -> str | None:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = conn.recv(limit)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip() or None


def _read_token(conn: socket.socket) -> str | None:
    """The token line a caller sends first (None if it sends none within half a second)."""
    conn.settimeout(0.5)
    try:
        return _read_line(conn)
    except TimeoutError:
        return None
    finally:
        conn.settimeout(2.0)


def query_status(addr: str, timeout: float = 1.0, security: TransportSecurity | None = None) -> str | None:
    """The state line of the worker at `addr`, or None if nothing answers there (or the TLS handshake fails)."""
    security = TransportSecurity.from_environ() if security is None else security
    host, port = split_addr(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as raw:
            raw.settimeout(timeout)
            raw.connect((host.strip("[]"), port))
            with security.wrap_client(raw, host) as sock:
                token = security.token
                if token is not None:
                    sock.sendall(f"{token}\n".encode())
                return _read_line(sock, 128)
    except OSError:  # ssl.SSLError included
        return None


class JobWatcher:
    """Tracks every worker's reported state; `poll()` returns True once all have said `exited 0`."""

    def __init__(self, workers: list[str]) -> None:
        self.workers = list(workers)
        self.states: dict[str, str | None] = {w: None for w in self.workers}

    def poll(self) -> bool:
        for i, addr in enumerate(self.workers):
            if self.states[addr] == "exited 0":
                continue
            state = query_status(addr)
            previous = self.states[addr]
            if state is None and previous is not None and not previous.startswith("gone"):
                log.warning("worker:%d at %s went away (last state %r); waiting for it to return", i, addr, previous)
                state = f"gone after {previous}"
            elif state is None:
                state = previous
            elif state != previous:
                log.info("worker:%d at %s: %s", i, addr, state)
            self.states[addr] = state
        return all(s == "exited 0" for s in self.states.values())

    def summary(self) -> str:
        return ", ".join(f"worker:{i}={self.states[a] or 'unseen'}" for i, a in enumerate(self.workers))
