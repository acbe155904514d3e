"""TLS, mutual TLS and the shared token on the serving ports: `monolith serve` (a distributed export) and
its `monolith serve-ps` shards, all started with certificates from a throwaway CA and a token. A TF Serving
client with the right certificate and token gets the trained model's predictions (so serve's own client of
the serving PS shards spoke TLS with the token too); plaintext, a missing certificate and a wrong token
are refused."""
from __future__ import annotations

import os

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from services.transport_security import TransportSecurity
from tests.processes import ProcessGroup
from tests.serving_cluster import wait_address
from tests.serving_fixtures import SERVING_SHARDS, STEPS
from tests.throwaway_ca import ThrowawayCA

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROWS = 32


@pytest.fixture(scope="module")
def secured(tmp_path_factory, trained_on_3_shards, distributed_export):
    root = tmp_path_factory.mktemp("serving-pki")
    ca, other = ThrowawayCA(root / "ca"), ThrowawayCA(root / "other", "other-ca")
    token = root / "token"
    token.write_text("serving-token\n")
    server, client, stranger = ca.issue("serving"), ca.issue("client"), other.issue("client")
    flags = ["--tls-cert", server.cert, "--tls-key", server.key, "--tls-ca", ca.cert, "--auth-token-file", str(token)]
    group = ProcessGroup()
    try:
        shards = [group.start(["-m", "launch.cli", "serve-ps", "--export-dir", distributed_export[f"ps_{i}"],
                               "--port", "0", "--grace-s", "1", *flags], name="serve-ps")
                  for i in range(SERVING_SHARDS)]
        addresses = [wait_address(group, p) for p in shards]
        base = os.path.dirname(os.path.dirname(distributed_export["entry"]))
        serve = group.start(["-m", "launch.cli", "serve", "--export-base", base, "--port", "0", "--grace-s", "2",
                             "--ps-addresses", ",".join(addresses), "--ps-timeout-s", "5", *flags], name="serve")
        yield {
            "address": wait_address(group, serve), "trained": trained_on_3_shards,
            "good": TransportSecurity(client.cert, client.key, ca.cert, token_file=str(token)),
            "stranger": TransportSecurity(stranger.cert, stranger.key, ca.cert, token_file=str(token)),
            "no-cert": TransportSecurity(ca_file=ca.cert, token_file=str(token)),
            "plaintext": TransportSecurity(token_file=str(token)),
            "no-token": TransportSecurity(client.cert, client.key, ca.cert),
            "ps": addresses,
        }
    finally:
        group.close()


def _predict(security: TransportSecurity, address: str, examples):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "default"
    req.inputs["examples"].CopyFrom(tf.make_tensor_proto(np.array(examples, dtype=object)))
    with security.channel(address) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(req, timeout=60)


def test_a_secured_distributed_serving_answers_the_right_client(secured):
    trained = secured["trained"]
    response = _predict(secured["good"], secured["address"], trained.examples[:ROWS])
    assert response.model_spec.version.value == STEPS[-1]
    for head in ("ctr", "score"):
        np.testing.assert_allclose(tf.make_ndarray(response.outputs[head]),
                                   [p[head] for p in trained.reference[:ROWS]], rtol=0, atol=1e-6)


@pytest.mark.parametrize("who", ["stranger", "no-cert", "plaintext"])
def test_a_client_without_the_cas_certificate_is_refused(secured, who):
    for address in (secured["address"], *secured["ps"]):
        with pytest.raises(grpc.RpcError) as info:
            _predict(secured[who], address, secured["trained"].examples[:2])
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE, (who, address)


def test_a_client_without_the_token_is_unauthenticated(secured):
    with pytest.raises(grpc.RpcError) as info:
        _predict(secured["no-token"], secured["address"], secured["trained"].examples[:2])
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
