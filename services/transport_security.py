"""TLS, mutual TLS and a shared token for every port a job opens: gRPC servers and their clients, the
job-status port and the metrics port.

A process has one `TransportSecurity`, read from `--tls-cert/--tls-key/--tls-ca/--tls-server-name/
--auth-token-file` or from the environment (`MONOLITH_TLS_CERT`, ...). The launchers (`monolith run`,
`local`, `ray`) pass it on by environment, so every child of a job, and every client inside it (a worker's
`PSClient`, the readiness checks), speaks the same way without more flags.

- `--tls-cert` + `--tls-key`: servers present this certificate; clients present it too when the server
  asks for one (mutual TLS).
- `--tls-ca`: clients verify servers against this CA, and servers require every client to present a
  certificate signed by it (mutual TLS). Without it clients use the system's roots and servers ask for no
  client certificate.
- `--auth-token-file`: a shared secret for clusters without a PKI. Clients send it with every call; a
  server refuses a call without it, or with another one, with `UNAUTHENTICATED`.

Refusals are counted in `monolith_auth_refusals_total{server, reason}`. A certificate that fails mutual TLS
is refused by the TLS handshake itself, before any call exists: the gRPC core gives the server no hook
there (the client sees the connection fail, as `UNAVAILABLE`), so gRPC ports count token refusals, and
the job-status port, whose TLS runs in Python, counts handshake refusals too.
"""
from __future__ import annotations

import argparse
import hmac
import logging
import os
import socket
import ssl
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import grpc
from prometheus_client import Counter

log = logging.getLogger(__name__)

ENV = {"cert_file": "MONOLITH_TLS_CERT", "key_file": "MONOLITH_TLS_KEY", "ca_file": "MONOLITH_TLS_CA",
       "server_name": "MONOLITH_TLS_SERVER_NAME", "token_file": "MONOLITH_AUTH_TOKEN_FILE"}
"""The environment variable of each setting (how launchers hand it to their children)."""

TOKEN_METADATA = "authorization"
_BEARER = "Bearer "

REFUSALS = Counter("monolith_auth_refusals_total", "calls or connections refused for a missing or wrong credential",
                   ["server", "reason"])


class SecurityConfigError(ValueError):
    """A TLS or token setting is inconsistent or names a file that cannot be read."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise SecurityConfigError(f"{what} {path!r} cannot be read: {exc}") from None
    if not data.strip():
        raise SecurityConfigError(f"{what} {path!r} is empty")
    return data


@dataclass(frozen=True)
class TransportSecurity:
    """How this process's servers and clients protect their connections (all None: plaintext, no token)."""

    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    server_name: str | None = None
    """The name clients check the server certificate against instead of the address's host (one
    certificate for every shard of a job)."""
    token_file: str | None = None

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise SecurityConfigError("--tls-cert and --tls-key go together (got only "
                                      f"{'--tls-cert' if self.cert_file else '--tls-key'})")
        if self.server_name and not self.tls:
            raise SecurityConfigError("--tls-server-name needs TLS (--tls-cert/--tls-key or --tls-ca)")
        # read everything once, so a wrong path fails at start-up, naming the file
        for name, what in (("cert_file", "TLS certificate"), ("key_file", "TLS key"), ("ca_file", "TLS CA"),
                           ("token_file", "auth token file")):
            path = getattr(self, name)
            if path:
                _read(path, what)
        if self.token_file and not self.token:
            raise SecurityConfigError(f"auth token file {self.token_file!r} holds only whitespace")

    # -- where it comes from ---------------------------------------------------------------------
    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> TransportSecurity:
        env = os.environ if environ is None else environ
        return cls(**{name: env.get(var) or None for name, var in ENV.items()})

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> TransportSecurity:
        """The flags of `add_arguments`, each falling back to its environment variable."""
        base = cls.from_environ(environ)
        return cls(**{f.name: getattr(args, f"tls_{f.name}", None) or getattr(base, f.name) for f in fields(cls)})

    def environ(self) -> dict[str, str]:
        """The environment variables that give a child process this configuration."""
        return {var: getattr(self, name) for name, var in ENV.items() if getattr(self, name)}

    def export(self, environ: MutableMapping[str, str] | None = None) -> None:
        """Put this configuration into `environ` (default: this process's), replacing any earlier one."""
        env = os.environ if environ is None else environ
        for var in ENV.values():
            env.pop(var, None)
        env.update(self.environ())

    # -- what it means -----------------------------------------------------------------------------
    @property
    def tls(self) -> bool:
        return bool(self.cert_file or self.ca_file)

    @property
    def mutual(self) -> bool:
        return bool(self.ca_file and self.cert_file)

    @property
    def token(self) -> str | None:
        return _read(self.token_file, "auth token file").decode().strip() if self.token_file else None

    def describe(self) -> str:
        parts = [("mutual TLS" if self.mutual else "TLS") if self.tls else "plaintext"]
        if self.token_file:
            parts.append("token")
        return "+".join(parts)

    # -- gRPC servers ------------------------------------------------------------------------------
    def add_port(self, server: Any, address: str) -> int:
        """Bind `address` on a `grpc.server` / `grpc.aio.server`, with TLS when configured; the bound port."""
        if not self.tls:
            return server.add_insecure_port(address)
        if not self.cert_file or not self.key_file:
            raise SecurityConfigError("a TLS server needs --tls-cert and --tls-key (only --tls-ca was given)")
        creds = grpc.ssl_server_credentials(
            [(_read(self.key_file, "TLS key"), _read(self.cert_file, "TLS certificate"))],
            root_certificates=_read(self.ca_file, "TLS CA") if self.ca_file else None,
            require_client_auth=bool(self.ca_file))
        return server.add_secure_port(address, creds)

    def server_handlers(self, handlers: Sequence[grpc.GenericRpcHandler], server: str) -> list[grpc.GenericRpcHandler]:
        """`handlers`, behind the token check when a token is configured (`server` names it in the metrics)."""
        token = self.token
        if token is None:
            return list(handlers)
        return [_TokenGate(handler, token, server) for handler in handlers]

    # -- gRPC clients ------------------------------------------------------------------------------
    def channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A channel to `address` that speaks TLS and sends the token as configured."""
        opts = list(options)
        if self.tls:
            if self.server_name:
                opts.append(("grpc.ssl_target_name_override", self.server_name))
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(self.ca_file, "TLS CA") if self.ca_file else None,
                private_key=_read(self.key_file, "TLS key") if self.key_file else None,
                certificate_chain=_read(self.cert_file, "TLS certificate") if self.cert_file else None)
            channel = grpc.secure_channel(address, creds, options=opts)
        else:
            channel = grpc.insecure_channel(address, options=opts)
        token = self.token
        if token is None:
            return channel
        return grpc.intercept_channel(channel, _TokenSender(token))

    # -- plain TCP servers (job status) and HTTP (metrics) -------------------------------------------
    def server_ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        if not self.cert_file or not self.key_file:
            raise SecurityConfigError("a TLS server needs --tls-cert and --tls-key (only --tls-ca was given)")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.ca_file:
            ctx.load_verify_locations(self.ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else ssl.create_default_context()
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def wrap_client(self, sock: socket.socket, host: str) -> socket.socket:
        ctx = self.client_ssl_context()
        return sock if ctx is None else ctx.wrap_socket(sock, server_hostname=self.server_name or host.strip("[]"))

    def metrics_server_kwargs(self) -> dict[str, Any]:
        """prometheus_client's `start_http_server` TLS arguments (mutual TLS when a CA is configured)."""
        if not self.tls:
            return {}
        if not self.cert_file:
            raise SecurityConfigError("a TLS server needs --tls-cert and --tls-key (only --tls-ca was given)")
        return {"certfile": self.cert_file, "keyfile": self.key_file, "client_cafile": self.ca_file,
                "client_auth_required": bool(self.ca_file)}

    def token_matches(self, presented: str | None) -> bool:
        token = self.token
        return token is None or (presented is not None and hmac.compare_digest(presented.encode(), token.encode()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--tls-cert`, `--tls-key`, `--tls-ca`, `--tls-server-name`, `--auth-token-file` (each defaults to its
    environment variable)."""
    group = parser.add_argument_group("transport security (default: the MONOLITH_TLS_*/MONOLITH_AUTH_* environment)")
    group.add_argument("--tls-cert", dest="tls_cert_file", default=None,
                       help=f"PEM certificate this process presents (${ENV['cert_file']})")
    group.add_argument("--tls-key", dest="tls_key_file", default=None,
                       help=f"PEM private key of --tls-cert (${ENV['key_file']})")
    group.add_argument("--tls-ca", dest="tls_ca_file", default=None,
                       help=f"PEM CA that peers' certificates must be signed by: mutual TLS (${ENV['ca_file']})")
    group.add_argument("--tls-server-name", dest="tls_server_name", default=None,
                       help=f"name checked in server certificates instead of the host (${ENV['server_name']})")
    group.add_argument("--auth-token-file", dest="tls_token_file", default=None,
                       help=f"file holding the shared token sent with and required on every call "
                            f"(${ENV['token_file']})")


def from_args_exported(args: argparse.Namespace) -> TransportSecurity:
    """This process's configuration from its flags and environment, exported to its environment, so the
    clients it creates and the children it starts use the same."""
    security = TransportSecurity.from_args(args)
    security.export()
    return security


# -- gRPC token plumbing ----------------------------------------------------------------------------------
def _presented_token(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == TOKEN_METADATA:
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            return text[len(_BEARER):] if text.startswith(_BEARER) else text
    return None


def _refuse(message: str) -> Callable[[Any, grpc.ServicerContext], None]:
    def refuse(_request: Any, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return refuse


class _TokenGate(grpc.GenericRpcHandler):
    """Answers every call without the right token with UNAUTHENTICATED before its handler runs (the
    request bytes are never parsed), and counts it."""

    def __init__(self, inner: grpc.GenericRpcHandler, token: str, server: str) -> None:
        self._inner, self._token, self._server = inner, token.encode(), server

    def service(self, handler_call_details: grpc.HandlerCallDetails):
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        presented = _presented_token(handler_call_details.invocation_metadata)
        if presented is not None and hmac.compare_digest(presented.encode(), self._token):
            return handler
        reason = "missing-token" if presented is None else "wrong-token"
        REFUSALS.labels(self._server, reason).inc()
        log.warning("%s: refused %s (%s)", self._server, handler_call_details.method, reason)
        return grpc.unary_unary_rpc_method_handler(_refuse(f"{self._server}: {reason.replace('-', ' ')}"),
                                                   request_deserializer=None, response_serializer=None)


class _TokenSender(grpc.UnaryUnaryClientInterceptor):
    """Adds the token to every call's metadata."""

    def __init__(self, token: str) -> None:
        self._entry = (TOKEN_METADATA, _BEARER + token)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        details = _CallDetails(client_call_details.method, client_call_details.timeout,
                               [*(client_call_details.metadata or ()), self._entry], client_call_details.credentials,
                               client_call_details.wait_for_ready, client_call_details.compression)
        return continuation(details, request)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None
