"""End to end: the model trained on 3 PS shards (tests/serving_fixtures.py), exported standalone and
distributed (2 serving PS shards), served by `monolith serve` and queried with TF Serving's own
`PredictionServiceStub`; version switches under load; every bad input gets its status code and the
servers keep answering; the Prometheus endpoint counts it all."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2 as tf_example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from protos import ps_pb2, ps_pb2_grpc
from ps.client.client import PSClient
from ps.errors import PSFailedPrecondition, PSInvalidArgument
from services.export_layout import ASSETS_EXTRA, ENTRY_META
from serving.merged_predicts import MergedPredicts, PredictCall
from serving.servable import Servable
from serving.shared_lookups import SharedLookups
from tests.processes import ProcessGroup
from tests.serving_cluster import metrics_address, start_serve, start_serve_ps, wait_address
from tests.serving_fixtures import SERVING_SHARDS, STEPS
from tests.tiny_models import ServingDNN
from worker.export.saved_model_exporters import StandaloneExporter

# the first test to use the session fixtures (training on 3 shards, exports) also pays for them
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
REQUEST_ROWS = 128


class Cluster:
    def __init__(self, tmp, trained) -> None:
        self.group = ProcessGroup()
        self.model_dir = trained.model_dir
        self.standalone_base = str(tmp / "standalone")
        self.examples = trained.examples[:REQUEST_ROWS]
        self.reference = trained.reference[:REQUEST_ROWS]

    def standalone(self, step: int) -> str:
        return StandaloneExporter(ServingDNN(), self.model_dir, self.standalone_base, global_step_as_timestamp=True,
                                  warmup_records=64).export_saved_model(
            checkpoint_path=f"{self.model_dir}/ckpt-{step}").decode()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, trained_on_3_shards, distributed_export):
    c = Cluster(tmp_path_factory.mktemp("serving"), trained_on_3_shards)
    dist_base = os.path.dirname(os.path.dirname(distributed_export["entry"]))
    try:
        c.standalone(STEPS[0])
        c.serve_ps = [start_serve_ps(c.group, distributed_export[f"ps_{i}"]) for i in range(SERVING_SHARDS)]
        standalone = start_serve(c.group, c.standalone_base, "--max-request-mb", "1", "--max-batch-size",
                                 str(len(c.examples)))
        c.ps_addresses = [wait_address(c.group, p) for p in c.serve_ps]
        distributed = start_serve(c.group, dist_base, "--ps-addresses", ",".join(c.ps_addresses),
                                  "--ps-timeout-s", "2")
        c.standalone_address, c.dist_address = wait_address(c.group, standalone), wait_address(c.group, distributed)
        c.standalone_metrics = metrics_address(c.group, standalone)
        yield c
    finally:
        c.group.close()


def _stub(address: str):
    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(address))


def _request(serialized, name="default", version=None, signature="serving_default", **inputs):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    if serialized is not None:
        req.inputs["examples"].CopyFrom(tf.make_tensor_proto(np.array(serialized, dtype=object)))
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    return req


def _served_version(stub) -> int:
    return stub.Predict(_request([b""]), timeout=30).model_spec.version.value


def test_version_switch_under_load(cluster):
    stub = _stub(cluster.standalone_address)
    assert _served_version(stub) == STEPS[0]
    seen, failures, stop = [], [], threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                seen.append(stub.Predict(_request(cluster.examples[:16]), timeout=30).model_spec.version.value)
            except grpc.RpcError as exc:
                failures.append(exc)
            time.sleep(0.01)  # steady traffic that leaves the exporter (same cores) room to work

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for step in STEPS[1:]:
            cluster.standalone(step)
        deadline = time.monotonic() + 240
        while (not seen or seen[-1] != STEPS[-1]) and time.monotonic() < deadline and not failures:
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    assert seen[-1] == STEPS[-1] and set(seen) <= set(STEPS)
    firsts = [seen.index(v) for v in STEPS if v in seen]
    assert firsts == sorted(firsts)     # versions came in order
    status = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(cluster.standalone_address)).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "default"}), timeout=30)
    assert [s.version for s in status.model_version_status] == [30, 40]   # the last 2 stay loaded


@pytest.mark.parametrize("which", ["standalone", "distributed"])
def test_served_predictions_equal_estimator_predict(cluster, which):
    if which == "standalone":
        cluster.standalone(STEPS[-1])      # no-op when the switch test made it
        address = cluster.standalone_address
        deadline = time.monotonic() + 240
        while _served_version(_stub(address)) != STEPS[-1] and time.monotonic() < deadline:
            time.sleep(0.2)
    else:
        address = cluster.dist_address
    response = _stub(address).Predict(_request(cluster.examples, version=STEPS[-1]), timeout=60)
    for head in ("ctr", "score"):
        np.testing.assert_allclose(tf.make_ndarray(response.outputs[head]),
                                   [p[head] for p in cluster.reference], rtol=0, atol=1e-6)
    meta = _stub(address).GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec={"name": "default"}, metadata_field=["signature_def"]), timeout=30)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(sig_map)
    assert {"serving_default", "hidden"} <= set(sig_map.signature_def)
    assert list(sig_map.signature_def["serving_default"].inputs) == ["examples"]
    assert set(sig_map.signature_def["serving_default"].outputs) == {"ctr", "score"}
    filtered = _stub(address).Predict(_request(cluster.examples[:3], signature="hidden"), timeout=30)
    assert tf.make_ndarray(filtered.outputs["hidden"]).shape == (3, 8)


def test_classify_and_regress(cluster):
    stub = _stub(cluster.standalone_address)
    examples = [tf_example_pb2.Example(), tf_example_pb2.Example()]
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "default"
    req.input.example_list.examples.extend(examples)
    result = stub.Classify(req, timeout=30).result.classifications
    predicted = stub.Predict(_request([b"", b""]), timeout=30).outputs
    assert [[c.label for c in r.classes] for r in result] == [["ctr", "score"]] * 2   # one class per head, by name
    np.testing.assert_allclose([r.classes[0].score for r in result], tf.make_ndarray(predicted["ctr"]), atol=1e-6)
    reg = regression_pb2.RegressionRequest()
    reg.model_spec.name = "default"
    reg.input.example_list.examples.extend(examples)
    with pytest.raises(grpc.RpcError) as exc:
        stub.Regress(reg, timeout=30)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "one float output" in exc.value.details()


def _bad_requests(examples):
    return [
        ("unknown model", _request(examples, name="nope"), grpc.StatusCode.NOT_FOUND, "unknown model"),
        ("unknown version", _request(examples, version=12345), grpc.StatusCode.NOT_FOUND, "no version 12345"),
        ("unknown signature", _request(examples, signature="nope"), grpc.StatusCode.NOT_FOUND, "no signature"),
        ("wrong input name", _request(None, inputs=np.array([b""], dtype=object)), grpc.StatusCode.INVALID_ARGUMENT,
         "missing ['examples'], unknown ['inputs']"),
        ("wrong dtype", _request(None, examples=np.zeros(3, np.float32)), grpc.StatusCode.INVALID_ARGUMENT,
         "expects DT_STRING, got float32"),
        ("wrong shape", _request(None, examples=np.array([[b"a", b"b"]], dtype=object)),
         grpc.StatusCode.INVALID_ARGUMENT, "expects shape [?], got [1, 2]"),
        ("undecodable", _request([b"\xff\xff\xff\x01garbage"]), grpc.StatusCode.INVALID_ARGUMENT, "signature"),
        ("oversized", _request([b"x" * (2 << 20)]), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
        ("batch too large", _request((examples * (len(examples) + 1))[:len(examples) + 1]),
         grpc.StatusCode.INVALID_ARGUMENT, f"batch of {len(examples) + 1} rows is above the server's "
                                           f"--max-batch-size {len(examples)}"),
    ]


def _scrape(address: str) -> dict[tuple[str, tuple], float]:
    """One real scrape of a Prometheus endpoint: {(sample name, sorted labels): value}."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    text = urlopen(f"http://{address}/metrics", timeout=30).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _predicts(samples, code: str) -> float:
    return samples.get(("monolith_serving_requests_total",
                        (("code", code), ("method", "Predict"), ("model", "default"))), 0.0)


def test_bad_inputs_get_their_status_and_the_server_keeps_answering(cluster):
    """Also what `/metrics` says about it: requests and errors by code, the latency histogram, the version."""
    stub = _stub(cluster.standalone_address)
    before = _scrape(cluster.standalone_metrics)
    cases = _bad_requests(cluster.examples)
    filtered = _request(cluster.examples[:2])
    filtered.output_filter.append("nope")
    cases.append(("unknown output", filtered, grpc.StatusCode.INVALID_ARGUMENT, "output_filter ['nope']"))
    for what, request, code, text in cases:
        with pytest.raises(grpc.RpcError) as exc:
            stub.Predict(request, timeout=30)
        assert exc.value.code() == code, (what, exc.value.details())
        assert text in (exc.value.details() or ""), (what, exc.value.details())
        assert stub.Predict(_request(cluster.examples[:2]), timeout=30).outputs["ctr"].dtype  # still serving
    raw = grpc.insecure_channel(cluster.standalone_address).unary_unary(
        "/tensorflow.serving.PredictionService/Predict", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as exc:
        raw(b"\xff\xff\xff\xff", timeout=30)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed PredictRequest" in exc.value.details()
    with pytest.raises(grpc.RpcError) as exc:
        stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec={"name": "default"}, metadata_field=["nope"]), timeout=30)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    served = stub.Predict(_request(cluster.examples[:2]), timeout=30)
    after = _scrape(cluster.standalone_metrics)
    # every case reached the handler except the oversized one (gRPC refuses it before any handler runs)
    grew = {code: _predicts(after, code) - _predicts(before, code) for code in ("OK", "NOT_FOUND", "INVALID_ARGUMENT")}
    invalid = sum(c == grpc.StatusCode.INVALID_ARGUMENT for _, _, c, _ in cases) + 1  # + the raw garbage bytes
    assert grew == {"OK": len(cases) + 1, "NOT_FOUND": 3, "INVALID_ARGUMENT": invalid}, grew
    latency = ("monolith_serving_request_seconds_count", (("method", "Predict"), ("model", "default")))
    answered = sum(v for (name, labels), v in after.items()
                   if name == "monolith_serving_requests_total" and ("method", "Predict") in labels)
    assert after[latency] == answered and after[latency] - before.get(latency, 0) == sum(grew.values())
    assert after[("monolith_serving_model_version", (("model", "default"),))] == served.model_spec.version.value


def test_serving_ps_is_read_only(cluster):
    stub = ps_pb2_grpc.ParameterServerStub(grpc.insecure_channel(cluster.ps_addresses[0]))
    update = ps_pb2.UpdateRequest(tables=[ps_pb2.TableUpdate(table="f0", ids=np.zeros(1, np.int64).tobytes(),
                                                              values=np.zeros(4, np.float32).tobytes())])
    for method, request in (("Assign", update), ("ApplyGradients", ps_pb2.ApplyGradientsRequest()),
                            ("GlobalStep", ps_pb2.GlobalStepRequest(increment=1))):
        with pytest.raises(grpc.RpcError) as exc:
            getattr(stub, method)(request, timeout=30)
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "read-only" in exc.value.details()
    assert stub.Health(ps_pb2.HealthRequest(), timeout=30).restored_from.endswith("ps_0/40")


def test_an_entry_exported_with_a_rows_input_per_table_is_refused(cluster, distributed_export, tmp_path):
    """Entries exported before the lookup was packed into one tensor (`id`, `id_split`, `flat_emb`) are refused
    with a clear error at load, not served wrongly."""
    old = tmp_path / "entry" / "1"
    shutil.copytree(distributed_export["entry"], old)
    meta_path = old / ASSETS_EXTRA / ENTRY_META
    meta = json.loads(meta_path.read_text())
    del meta["lookup"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(PSFailedPrecondition, match="older monolith .* re-export"):
        Servable("default", 1, old, ps_client=PSClient(cluster.ps_addresses, timeout_s=30))


def test_concurrent_lookups_share_rpcs_and_each_gets_its_own_rows(cluster):
    """Lookups queued behind one in flight go out as one batch (duplicates across requests included); each
    caller gets exactly the rows a lookup of its own ids returns; the client's errors reach the caller."""
    client = PSClient(cluster.ps_addresses, timeout_s=30)
    tables = sorted(client.stats()["tables"])[:2]
    gate, entered, sizes = threading.Event(), threading.Event(), []

    class Held:  # the real client; its first call waits until the others have queued
        def lookup_many(self, ids, dedupe):
            sizes.append(len(next(iter(ids.values()))))
            if len(sizes) == 1:
                entered.set()
                gate.wait(30)
            return client.lookup_many(ids, dedupe=dedupe)

    shared = SharedLookups(Held())
    requests = [{t: np.array([i, i + 1, 1000 + i], np.int64) for t in tables} for i in range(4)]
    got: dict[int, object] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, shared.lookup(requests[i]))) for i in range(4)]
    threads[0].start()
    assert entered.wait(30)
    for t in threads[1:]:
        t.start()
    while len(shared._calls._queue) < 3:
        time.sleep(0.01)
    gate.set()
    for t in threads:
        t.join(30)
    assert sizes == [3, 9]  # the first alone, then the three queued behind it together
    for i, request in enumerate(requests):
        want = client.lookup_many(request, dedupe=False)
        for t in tables:
            np.testing.assert_array_equal(got[i][t], want[t])
    with pytest.raises(ValueError, match="unknown table"):
        SharedLookups(client).lookup({"no_such_table": np.zeros(1, np.int64)})
    client.close()


def test_concurrent_predicts_run_as_one_batch_and_each_gets_its_own_rows(cluster):
    """Predicts queued behind one in flight run together (up to the batch limit, compatible requests only);
    each gets the rows Estimator.predict gives for its own examples; bad data fails only its request."""
    path = Path(cluster.standalone(STEPS[-1]))  # the reference's step (a no-op when an earlier test made it)
    servable = Servable("default", int(path.name), path, merge_requests=False)
    gate, entered, rows_per_call, requests_per_call = threading.Event(), threading.Event(), [], []

    def held(signature, inputs, wanted):  # the real model call; the first waits until the others queued
        rows_per_call.append(len(inputs["examples"]))
        if len(rows_per_call) == 1:
            entered.set()
            gate.wait(30)
        return servable._run(signature, inputs, wanted)

    merged = MergedPredicts(held, max_rows=48, observe=requests_per_call.append, max_in_flight=1)
    ex = np.array(cluster.examples, dtype=object)
    spans = {"first": (0, 5), "a": (5, 25), "b": (25, 45), "c": (45, 65), "filtered": (65, 70)}
    calls = {k: PredictCall("serving_default", {"examples": ex[i:j]}, ("ctr",) if k == "filtered" else ())
             for k, (i, j) in spans.items()}
    calls["bad"] = PredictCall("serving_default", {"examples": np.array([b"\xff\xff\xff\x01garbage"], object)}, ())
    got: dict[str, object] = {}

    def send(key: str) -> None:
        try:
            got[key] = merged.predict(calls[key])
        except Exception as exc:  # noqa: BLE001 - checked below
            got[key] = exc

    threads = {k: threading.Thread(target=send, args=(k,)) for k in ("first", "a", "b", "c", "bad", "filtered")}
    threads["first"].start()
    assert entered.wait(30)
    for n, key in enumerate(("a", "b", "c", "bad", "filtered"), 1):
        threads[key].start()
        while len(merged._calls._queue) < n:
            time.sleep(0.005)
    gate.set()
    for t in threads.values():
        t.join(60)
    # alone; a+b (c would pass 48 rows); c+bad fails, so both run again alone; the filtered one apart
    assert rows_per_call == [5, 40, 21, 20, 1, 5], rows_per_call
    assert requests_per_call == [1, 2, 2, 1, 1, 1], requests_per_call
    assert isinstance(got["bad"], PSInvalidArgument), got["bad"]
    for key, (i, j) in spans.items():
        out = got[key]
        assert isinstance(out, dict), (key, out)
        assert set(out) == ({"ctr"} if key == "filtered" else {"ctr", "score"})
        for head, values in out.items():
            np.testing.assert_allclose(values, [p[head] for p in cluster.reference[i:j]], rtol=0, atol=1e-6)


def test_a_serving_ps_shard_down_is_unavailable_naming_it(cluster):
    stub = _stub(cluster.dist_address)
    cluster.group.stop(cluster.serve_ps[1])
    with pytest.raises(grpc.RpcError) as exc:
        stub.Predict(_request(cluster.examples[:8]), timeout=60)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"PS shard 1 ({cluster.ps_addresses[1]})" in exc.value.details()
    meta = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec={"name": "default"}, metadata_field=["signature_def"]), timeout=30)
    assert meta.model_spec.version.value == STEPS[-1]      # the entry server itself still answers
