"""TLS, mutual TLS and the shared token on a real `monolith ps` process, its metrics port and the
job-status port, with certificates from a throwaway CA: the right client is served; no certificate, a
certificate from another CA, plaintext, and a missing or wrong token are refused, the refusals are counted
in Prometheus, and nothing a refused client sent changed the shard."""
from __future__ import annotations

import socket
import ssl
import urllib.error

import grpc
import numpy as np
import pytest

from launch.job_status import UNAUTHENTICATED, StatusServer, query_status
from ps.client import PSClient
from ps.errors import PSUnauthenticated, PSUnavailable
from services.ports import free_port
from services.transport_security import ENV, SecurityConfigError, TransportSecurity
from tests.ps_cluster import start_shard, wait_ready
from tests.scrape import scrape
from tests.throwaway_ca import ThrowawayCA

TABLE = {"dim": 4, "optimizer": {"type": "sgd", "learning_rate": 1.0}}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca, other = ThrowawayCA(root / "ca"), ThrowawayCA(root / "other", "other-ca")
    token, wrong = root / "token", root / "wrong-token"
    token.write_text("s3cret-token\n")
    wrong.write_text("not-the-token\n")
    return {"ca": ca, "server": ca.issue("ps"), "client": ca.issue("worker"), "stranger": other.issue("worker"),
            "token": str(token), "wrong": str(wrong)}


def _security(pki, who="client", ca=True, token="token") -> TransportSecurity:
    issued = pki[who] if who else None
    return TransportSecurity(cert_file=issued.cert if issued else None, key_file=issued.key if issued else None,
                             ca_file=pki["ca"].cert if ca else None, token_file=pki[token] if token else None)


def _scrape_tls(pki):
    ctx = _security(pki).client_ssl_context()
    assert ctx is not None
    return ctx


@pytest.fixture(scope="module")
def tls_shard(module_processes, pki):
    server = _security(pki, "server")
    proc = start_shard(module_processes, 0, 1, extra=["--metrics-port", "0", "--tls-cert", server.cert_file,
                                                       "--tls-key", server.key_file, "--tls-ca", server.ca_file,
                                                       "--auth-token-file", server.token_file])
    return wait_ready(module_processes, proc)


@pytest.mark.slow
def test_mutual_tls_and_token_refusals(tls_shard, pki):
    addr = [tls_shard.address]
    with PSClient(addr, security=_security(pki)) as good:
        good.create_tables({"t": TABLE})
        good.assign("t", [1, 2], np.ones((2, 4), np.float32))
        before = good.lookup("t", [1, 2, 3])
    refused = {
        "no certificate": _security(pki, who=None),
        "certificate from another CA": _security(pki, who="stranger"),
        "plaintext": TransportSecurity(token_file=pki["token"]),
    }
    for security in refused.values():
        with PSClient(addr, security=security, retries=1, timeout_s=5) as bad, pytest.raises(PSUnavailable):
            bad.assign("t", [3], np.full((1, 4), 7, np.float32))
    tokenless = {"no token": _security(pki, token=None), "wrong token": _security(pki, token="wrong")}
    for what, security in tokenless.items():
        with PSClient(addr, security=security, retries=1, timeout_s=5) as bad:
            with pytest.raises(PSUnauthenticated, match="token") as info:
                bad.assign("t", [3], np.full((1, 4), 7, np.float32))
            assert info.value.code is grpc.StatusCode.UNAUTHENTICATED, what
            with pytest.raises(PSUnauthenticated):
                bad.stats()
    with PSClient(addr, security=_security(pki)) as good:
        np.testing.assert_array_equal(good.lookup("t", [1, 2, 3]), before)  # nothing refused reached the table
    metrics = scrape(int(tls_shard.metrics.rsplit(":", 1)[1]), tls=_scrape_tls(pki))
    assert metrics.value("monolith_auth_refusals_total", server="ps", reason="missing-token") == 2
    assert metrics.value("monolith_auth_refusals_total", server="ps", reason="wrong-token") == 2


@pytest.mark.slow
def test_metrics_port_requires_a_client_certificate(tls_shard, pki):
    port = int(tls_shard.metrics.rsplit(":", 1)[1])
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext HTTP to a TLS port
        scrape(port)
    stranger = TransportSecurity(cert_file=pki["stranger"].cert, key_file=pki["stranger"].key,
                                 ca_file=pki["ca"].cert).client_ssl_context()
    no_cert = TransportSecurity(ca_file=pki["ca"].cert).client_ssl_context()
    for ctx in (stranger, no_cert):
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            scrape(port, tls=ctx)
    assert scrape(port, tls=_scrape_tls(pki)).value("monolith_ps_global_step", shard="0") == 0


def test_job_status_port_with_mutual_tls_and_token(pki):
    from prometheus_client import REGISTRY

    def refusals(reason):
        labels = {"server": "job-status", "reason": reason}
        return REGISTRY.get_sample_value("monolith_auth_refusals_total", labels) or 0

    port = free_port()
    server = StatusServer(port, "127.0.0.1", security=_security(pki, "server"))
    server.state = "running"
    addr = f"127.0.0.1:{port}"
    try:
        assert query_status(addr, security=_security(pki)) == "running"
        before = refusals("tls-handshake"), refusals("wrong-token")
        assert query_status(addr, security=_security(pki, who=None)) is None
        assert query_status(addr, security=_security(pki, who="stranger")) is None
        assert query_status(addr, security=TransportSecurity()) is None  # plaintext
        assert query_status(addr, security=_security(pki, token="wrong")) == UNAUTHENTICATED
        assert query_status(addr, security=_security(pki, token=None)) == UNAUTHENTICATED
        # the failed handshakes are counted once the server thread has seen them
        assert refusals("tls-handshake") - before[0] == 3
        assert refusals("wrong-token") - before[1] == 2
    finally:
        server.close()


def test_configuration_errors_name_the_setting(tmp_path, pki):
    with pytest.raises(SecurityConfigError, match="go together"):
        TransportSecurity(cert_file=pki["client"].cert)
    with pytest.raises(SecurityConfigError, match="cannot be read"):
        TransportSecurity(ca_file=str(tmp_path / "missing.pem"))
    blank = tmp_path / "blank"
    blank.write_text("  \n")
    with pytest.raises(SecurityConfigError, match="empty"):
        TransportSecurity(token_file=str(blank))
    with pytest.raises(SecurityConfigError, match="needs TLS"):
        TransportSecurity(server_name="ps")
    security = _security(pki)
    assert TransportSecurity.from_environ(security.environ()) == security
    assert set(security.environ()) == {ENV["cert_file"], ENV["key_file"], ENV["ca_file"], ENV["token_file"]}


def test_status_port_binds_loopback_by_default():
    port = free_port()
    server = StatusServer(port, security=TransportSecurity())
    try:
        assert server._sock.getsockname()[0] == "127.0.0.1"
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        server.close()
