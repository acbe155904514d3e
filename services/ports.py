"""Free-port selection: tests and the local launcher never use fixed ports.

A port is chosen some time before the process that serves on it binds it. A port the OS hands out for
`bind(0)` lies in the ephemeral range, the range it also takes the source ports of outgoing connections
from, so in between any client connection on the machine can take it (the server then fails with "address
already in use"). So ports are drawn at random from below that range, where the OS never assigns a port by
itself, and checked free by binding; only if that range is too small does the OS pick.
"""
from __future__ import annotations

import secrets
import socket

_EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
_LOWEST = 20000
"""Below this, well-known services of the machine are more likely to sit."""
_TRIES = 64


def _ephemeral_low() -> int:
    """The first port of the OS's ephemeral range (Linux's default when it cannot be read)."""
    try:
        with open(_EPHEMERAL_RANGE_FILE) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(family: socket.AddressFamily, host: str, port: int) -> int | None:
    """The port bound (the OS's choice for port 0), or None if it is taken."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT does not block
        try:
            s.bind((host, port))
        except OSError:
            return None
        return s.getsockname()[1]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago, outside the range the OS assigns by itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low = _ephemeral_low()
    if low - _LOWEST >= 1000:
        for _ in range(_TRIES):
            port = _bindable(family, host, _LOWEST + secrets.randbelow(low - _LOWEST))
            if port is not None:
                return port
    port = _bindable(family, host, 0)
    if port is None:
        raise OSError(f"no free TCP port on {host}")
    return port
