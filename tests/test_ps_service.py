"""Every PS RPC against real shard processes on loopback, checked against an in-process store."""
import re
import threading
import urllib.request

import grpc
import numpy as np
import pytest

from protos import ps_pb2
from ps.client import PSClient
from ps.errors import IncompatibleShard, PSAlreadyExists, PSError, PSNotFound
from ps.sharding import dense_owner
from ps.store.table import EmbeddingTable
from ps.wire.protocol_version import MIN_SHARD_VERSION, PROTOCOL_VERSION
from tests.ps_cluster import start_shard, wait_ready

pytestmark = pytest.mark.slow

USER = {"segments": [
    {"dim": 1, "initializer": {"type": "constant", "value": 0.5}, "optimizer": {"type": "sgd", "learning_rate": 0.3}},
    {"dim": 7, "initializer": {"type": "zeros"},
     "optimizer": {"type": "adagrad", "learning_rate": 0.1, "initial_accumulator_value": 0.1}},
]}
ITEM = {"dim": 4, "initializer": {"type": "ones"}, "optimizer": {"type": "sgd", "learning_rate": 0.05}}
RANK = {"segments": [  # random init (a hash of the id), FTRL + Adam, admission on the 3rd occurrence
    {"dim": 2, "initializer": {"type": "random_uniform", "minval": -0.1, "maxval": 0.1, "seed": 3},
     "optimizer": {"type": "ftrl", "learning_rate": 0.1, "initial_accumulator_value": 0.1,
                   "l1_regularization_strength": 0.01, "l2_regularization_strength": 0.1}},
    {"dim": 3, "initializer": {"type": "zeros"},
     "optimizer": {"type": "adam", "learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-7}},
], "occurrence_threshold": 2}
EXPIRING = {"dim": 2, "optimizer": {"type": "sgd", "learning_rate": 0.1}, "expire_time_days": 1}
MAX_MB = 4


@pytest.fixture(scope="module")
def cluster(module_processes):
    procs = [start_shard(module_processes, i, 2, extra=["--max-message-mb", str(MAX_MB)]) for i in range(2)]
    aio = start_shard(module_processes, 0, 1, extra=["--server-model", "aio"])
    shards = [wait_ready(module_processes, p) for p in procs]
    aio_shard = wait_ready(module_processes, aio)
    client = PSClient([s.address for s in shards], timeout_s=60, retries=2)
    client.wait_until_ready(30)
    client.create_tables({"user": USER, "item": ITEM, "rank": RANK, "expiring": EXPIRING})
    yield {"shards": shards, "client": client, "aio": aio_shard, "group": module_processes}
    client.close()


def raw_call(address, method, payload: bytes):
    with grpc.insecure_channel(address) as ch:
        return ch.unary_unary(f"/monolith.ps.ParameterServer/{method}")(payload, timeout=20)


def rpc_error(address, method, payload: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        raw_call(address, method, payload)
    return info.value


def snapshot(client):
    ids = np.arange(-40, 40)
    return {t: client.lookup(t, ids) for t in ("user", "item")}, client.stats()["total_rows"]


def test_health_reports_each_shard(cluster):
    health = cluster["client"].health()
    assert [(h["shard_index"], h["num_shards"], h["serving"]) for h in health] == [(0, 2, True), (1, 2, True)]
    assert {h["server_model"] for h in health} == {"sync"}
    assert all(h["pid"] == s.proc.pid for h, s in zip(health, cluster["shards"]))
    assert {h["protocol_version"] for h in health} == {PROTOCOL_VERSION}


def test_a_shard_older_than_the_protocol_is_refused_before_any_call():
    """FAKE old shard: a Health-only gRPC server answering as a shard from before protocol versions would
    (protocol_version unset). A real one would take an old checkout; what matters is the field it lacks."""
    from concurrent.futures import ThreadPoolExecutor

    def health(_request, _context):
        return ps_pb2.HealthResponse(shard_index=0, num_shards=1, serving=True)

    handler = grpc.method_handlers_generic_handler("monolith.ps.ParameterServer", {
        "Health": grpc.unary_unary_rpc_method_handler(
            health, request_deserializer=ps_pb2.HealthRequest.FromString,
            response_serializer=ps_pb2.HealthResponse.SerializeToString)})
    server = grpc.server(ThreadPoolExecutor(max_workers=1), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        wanted = f"protocol version 0, older than the {MIN_SHARD_VERSION} this client needs"
        with PSClient([f"127.0.0.1:{port}"]) as client, pytest.raises(IncompatibleShard, match=wanted):
            client.wait_until_ready(10)
    finally:
        server.stop(0)


def test_create_tables_is_idempotent_and_refuses_a_conflict(cluster):
    client = cluster["client"]
    assert client.create_tables({"item": dict(ITEM)})["item"].dim == 4
    with pytest.raises(PSAlreadyExists) as info:  # the status the shard sent, as the client's own class
        client.create_tables({"item": {**ITEM, "dim": 5}})
    assert info.value.code is grpc.StatusCode.ALREADY_EXISTS
    assert "'item'" in str(info.value) and "shard" in str(info.value)
    assert client.table_meta("item").dim == 4


def test_sharded_updates_match_a_single_in_process_store(cluster):
    client = cluster["client"]
    ref = {"user": EmbeddingTable.from_dict(USER), "item": EmbeddingTable.from_dict(ITEM),
           "rank": EmbeddingTable.from_dict(RANK)}
    rng = np.random.default_rng(0)
    for step in range(6):
        batch = {}
        for name, t in ref.items():
            ids = (rng.zipf(1.3, size=300) * rng.choice([-1, 1], size=300)).astype(np.int64) % 5000 - 2500
            batch[name] = (ids, rng.normal(size=(ids.size, t.dim)).astype(np.float32))
        lrs = {"user": [0.2, 0.05]} if step == 3 else None
        client.apply_gradients_many(batch, global_step=step, learning_rates=lrs)
        for name, (ids, grads) in batch.items():
            lr = (lrs or {}).get(name)
            ref[name].apply_gradients(ids, grads, global_step=step, learning_rates=lr)
    assign_ids = np.array([-7, 3, 10_000_000_000, -10_000_000_001], np.int64)
    values = rng.normal(size=(4, 4)).astype(np.float32)
    client.assign("item", assign_ids, values)
    ref["item"].assign(assign_ids, values)
    client.assign_add("item", assign_ids[:2], values[:2])
    ref["item"].assign_add(assign_ids[:2], values[:2])
    client.reinitialize("user", np.array([1, 2, -3]))
    ref["user"].reinitialize(np.array([1, 2, -3]))
    client.apply_gradients("user", np.array([5, 5, -9]), np.ones((3, 8), np.float32), global_step=9)
    ref["user"].apply_gradients(np.array([5, 5, -9]), np.ones((3, 8), np.float32), global_step=9)

    probe = np.concatenate([np.arange(-2600, 2600), assign_ids, [123456789]]).astype(np.int64)
    probe = np.concatenate([probe, probe[::7]])  # duplicates come back in input order
    assert 0 < ref["rank"].size < np.unique(probe).size  # admission really dropped some ids
    for name, t in ref.items():
        np.testing.assert_allclose(client.lookup(name, probe), t.lookup(probe), rtol=2e-6, atol=1e-7)
    per_shard = client.stats()["shards"]
    for name, t in ref.items():
        stored = np.unique(probe)[np.any(t.lookup(np.unique(probe)) != 0, axis=1) | (name == "item")]
        assert sum(s["tables"][name]["rows"] for s in per_shard) == t.size
        for s in per_shard:
            assert s["tables"][name]["rows"] <= t.size
        if name == "item":  # every item row is non-zero (ones initializer): check exact ownership counts
            owned = [int(np.sum(np.mod(stored[np.any(t.lookup(stored) != 0, axis=1)], 2) == k)) for k in range(2)]
            assert [s["tables"]["item"]["rows"] for s in per_shard] == owned

    half = PSClient(client.addresses, float16_lookup=True)
    try:
        got = half.lookup("user", probe)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref["user"].lookup(probe).astype(np.float16).astype(np.float32), rtol=1e-3)
    finally:
        half.close()


def test_concurrent_clients_lose_no_update(cluster):
    """4 clients push overlapping SGD updates at once: the result equals the serial sum."""
    addresses = cluster["client"].addresses
    cluster["client"].create_tables({"concurrent": {"dim": 3, "optimizer": {"type": "sgd", "learning_rate": 1.0}}})
    rng = np.random.default_rng(11)
    work = [[(rng.integers(-50, 50, size=500), rng.normal(size=(500, 3)).astype(np.float32)) for _ in range(8)]
            for _ in range(4)]
    errors = []

    def push(batches):
        try:
            with PSClient(addresses) as c:
                for ids, grads in batches:
                    c.apply_gradients("concurrent", ids, grads)
                    c.lookup("concurrent", ids)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(w,)) for w in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    expected = np.zeros((100, 3))
    for batches in work:
        for ids, grads in batches:
            np.add.at(expected, ids + 50, -grads.astype(np.float64))
    got = cluster["client"].lookup("concurrent", np.arange(-50, 50))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_lookup_many_is_one_call_for_all_tables(cluster):
    client = cluster["client"]
    before = {s["shard"]: s["requests"].get("Lookup", 0) for s in client.stats()["shards"]}
    out = client.lookup_many({"user": [1, 2, 3], "item": [4, -4, 4, 99]})
    after = {s["shard"]: s["requests"].get("Lookup", 0) for s in client.stats()["shards"]}
    assert out["user"].shape == (3, 8) and out["item"].shape == (4, 4)
    np.testing.assert_array_equal(out["item"][0], out["item"][2])
    assert all(after[k] - before[k] == 1 for k in before)
    np.testing.assert_array_equal(client.lookup("item", np.zeros(0, np.int64)), np.zeros((0, 4), np.float32))


def test_evict_removes_rows_expired_in_data_time(cluster):
    client = cluster["client"]
    client.assign("expiring", [1, 2, 3], np.ones((3, 2)), update_time=0)
    # each shard's table keeps its own data clock (max update time seen), so advance both
    client.assign("expiring", [4, 5], np.ones((2, 2)), update_time=3 * 86400)
    assert client.evict(["expiring"]) == {"expiring": 3}
    np.testing.assert_array_equal(client.lookup("expiring", [1, 2, 3, 4, 5]), [[0, 0]] * 3 + [[1, 1]] * 2)


def test_dense_push_pull_matches_numpy(cluster):
    client = cluster["client"]
    rng = np.random.default_rng(3)
    w0 = rng.normal(size=(3, 4)).astype(np.float32)
    b0 = rng.normal(size=4).astype(np.float32)
    adagrad = {"type": "adagrad", "learning_rate": 0.1, "initial_accumulator_value": 0.1}
    created = client.create_dense({"tower/w": {"shape": [3, 4], "optimizer": adagrad, "initial_value": w0},
                                   "tower/b": {"shape": [4], "optimizer": {"type": "sgd", "learning_rate": 0.5},
                                               "initial_value": b0}})
    assert created == {"tower/w": True, "tower/b": True}
    again = client.create_dense({"tower/w": {"shape": [3, 4], "optimizer": adagrad, "initial_value": w0 + 1}})
    assert again == {"tower/w": False}  # the first creator's value wins
    w, acc, b = w0.astype(np.float64), np.full((3, 4), 0.1), b0.astype(np.float64)
    for step in range(4):
        gw, gb = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
        lr = 0.02 if step == 2 else None
        client.dense_push({"tower/w": gw, "tower/b": gb}, global_step=step, learning_rate=lr)
        acc = acc + gw.astype(np.float64) ** 2
        w = w - (lr or 0.1) * gw / np.sqrt(acc)
        b = b - (lr or 0.5) * gb
    pulled = client.dense_pull()
    np.testing.assert_allclose(pulled["tower/w"], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pulled["tower/b"], b, rtol=1e-5, atol=1e-6)
    assert set(client.dense_pull(["tower/b"])) == {"tower/b"}
    with pytest.raises(PSAlreadyExists) as info:
        client.create_dense({"tower/w": {"shape": [4, 3], "optimizer": adagrad}})
    assert info.value.code is grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(ValueError, match="gradient shape"):
        client.dense_push({"tower/w": np.ones((4, 3))})
    with pytest.raises(PSNotFound, match="unknown dense variable 'nope'"):
        client.dense_pull(["nope"])


def test_push_step_claims_on_shard_0_and_applies_rows_and_dense_only_when_granted(cluster):
    """A training step's push is one ApplyGradients per shard with its rows and dense gradients, the claim
    riding on shard 0's; a refused claim, or a bad part, changes nothing anywhere."""
    client = cluster["client"]
    client.create_tables({"step_rows": ITEM})
    names = [f"step/v{i}" for i in range(4)]
    assert {dense_owner(n, 2) for n in names} == {0, 1}
    init = {n: np.full(3, i, np.float32) for i, n in enumerate(names)}
    client.create_dense({n: {"shape": [3], "optimizer": {"type": "sgd", "learning_rate": 0.5},
                             "initial_value": init[n]} for n in names})
    rng = np.random.default_rng(5)
    ids = np.arange(-6, 6, dtype=np.int64)  # rows on both shards
    grads = rng.normal(size=(ids.size, 4)).astype(np.float32)
    dense = {n: rng.normal(size=3).astype(np.float32) for n in names}
    start = client.global_step()
    assert client.push_step({"step_rows": (ids, grads)}, dense, global_step=start, claim_limit=start + 1) \
        == (start + 1, True)
    refused = client.push_step({"step_rows": (ids, 2 * grads)}, dense, global_step=start + 1, claim_limit=start + 1)
    assert refused == (start + 1, False)
    bad = ps_pb2.ApplyGradientsRequest(claim_limit=start + 5)
    bad.dense.add(name=names[0], values=b"12345")
    assert rpc_error(cluster["shards"][0].address, "ApplyGradients",
                     bad.SerializeToString()).code() is grpc.StatusCode.INVALID_ARGUMENT
    shard0_dense = next(n for n in names if dense_owner(n, 2) == 0)
    bad = ps_pb2.ApplyGradientsRequest(claim_limit=start + 5)  # a NaN gradient is refused before the claim
    bad.dense.add(name=shard0_dense, values=np.array([np.nan, 0, 0], np.float32).tobytes())
    err = rpc_error(cluster["shards"][0].address, "ApplyGradients", bad.SerializeToString())
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and shard0_dense in err.details() and "NaN" in err.details()
    with pytest.raises(ValueError, match="NaN"):
        client.push_step({}, {names[0]: np.array([np.nan, 0, 0])}, start, claim_limit=start + 5)
    assert client.global_step() == start + 1
    # a sole claimer (a job's only worker) sends every shard's part at once
    assert client.push_step({"step_rows": (ids, grads)}, dense, global_step=start + 1, claim_limit=start + 2,
                            sole_claimer=True) == (start + 2, True)
    with pytest.raises(PSError, match="sole claimer"):
        client.push_step({}, dense, global_step=start + 2, claim_limit=start + 2, sole_claimer=True)
    rows, values = client.lookup_step({"step_rows": ids}, names)  # a step's reads: one Lookup per shard
    np.testing.assert_allclose(rows["step_rows"], 1.0 - 2 * 0.05 * grads, rtol=1e-6)  # ones initializer, sgd 0.05
    np.testing.assert_allclose(client.lookup("step_rows", ids), rows["step_rows"])
    pulled = client.dense_pull(names)
    for n in names:  # two granted steps, and the dense part of the refused sole claim on shard 1
        steps = 3 if dense_owner(n, 2) == 1 else 2
        np.testing.assert_allclose(values[n], init[n] - steps * 0.5 * dense[n], rtol=1e-6)
        np.testing.assert_allclose(pulled[n], values[n])


def test_a_retried_apply_gradients_is_applied_and_claimed_once(cluster):
    """The same request (client id and number) twice, as a client retrying after UNAVAILABLE would send it: the
    second copy gets the first's reply and changes nothing; a new number, or no id at all, applies again."""
    client, shard0 = cluster["client"], cluster["shards"][0].address
    client.create_tables({"retried": ITEM})
    ids = np.array([2, 4, -8], np.int64)  # all on shard 0 (floor modulo 2)
    grads = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    start = client.global_step()

    def request(number: int, client_id: int = 77) -> bytes:
        r = ps_pb2.ApplyGradientsRequest(claim_limit=start + 10, client_id=client_id, request_number=number)
        r.tables.add(table="retried", ids=ids.astype("<i8").tobytes(), values=grads.astype("<f4").tobytes())
        return r.SerializeToString()

    first, again = (ps_pb2.UpdateResponse.FromString(raw_call(shard0, "ApplyGradients", request(1))) for _ in "ab")
    assert first == again and (first.global_step, first.claimed) == (start + 1, True)
    assert client.global_step() == start + 1
    np.testing.assert_allclose(client.lookup("retried", ids), 1.0 - 0.05 * grads, rtol=1e-6)  # ones, sgd 0.05
    raw_call(shard0, "ApplyGradients", request(2))
    raw_call(shard0, "ApplyGradients", request(2, client_id=0))  # no id: nothing to recognise a retry by
    assert client.global_step() == start + 3
    np.testing.assert_allclose(client.lookup("retried", ids), 1.0 - 3 * 0.05 * grads, rtol=1e-6)
    # the other non-idempotent updates: AssignAdd, GlobalStep increments, DensePush
    add = ps_pb2.UpdateRequest(client_id=77, request_number=3)
    add.tables.add(table="retried", ids=ids.astype("<i8").tobytes(), values=grads.astype("<f4").tobytes())
    step = ps_pb2.GlobalStepRequest(increment=5, client_id=77, request_number=4)
    client.create_dense({"retried/w": {"shape": [4], "optimizer": {"type": "sgd", "learning_rate": 0.5},
                                       "initial_value": np.zeros(4, np.float32)}})
    owner = cluster["shards"][dense_owner("retried/w", 2)].address
    push = ps_pb2.DensePushRequest(client_id=77, request_number=5)
    push.grads.add(name="retried/w", values=grads[0].astype("<f4").tobytes())
    for _copy in range(2):
        raw_call(shard0, "AssignAdd", add.SerializeToString())
        raw_call(shard0, "GlobalStep", step.SerializeToString())
        raw_call(owner, "DensePush", push.SerializeToString())
    np.testing.assert_allclose(client.lookup("retried", ids), 1.0 - 3 * 0.05 * grads + grads, rtol=1e-6)
    assert client.global_step() == start + 8
    np.testing.assert_allclose(client.dense_pull(["retried/w"])["retried/w"], -0.5 * grads[0], rtol=1e-6)


def test_global_step_is_shared_and_atomic(cluster):
    client = cluster["client"]
    start = client.global_step()
    others = [PSClient(client.addresses) for _ in range(3)]
    threads = [threading.Thread(target=lambda c=c: [c.increment_global_step() for _ in range(20)]) for c in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert client.global_step() == start + 60
    assert client.increment_global_step(5) == start + 65
    for c in others:
        c.close()
    with pytest.raises(PSError, match="shard 0"):
        raw = ps_pb2.GlobalStepRequest(increment=1).SerializeToString()
        try:
            raw_call(cluster["shards"][1].address, "GlobalStep", raw)
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.FAILED_PRECONDITION
            raise PSError(exc.details()) from None


@pytest.mark.parametrize("call, message", [
    (lambda c: c.lookup("nope", [1]), "unknown table 'nope'"),
    (lambda c: c.lookup("user", [1.5, 2.0]), "must be integers"),
    (lambda c: c.lookup("user", [[1, 2]]), "1-D"),
    (lambda c: c.apply_gradients("user", [1, 2], np.ones((2, 4))), r"expected shape \(2, 8\)"),
    (lambda c: c.apply_gradients("user", [1, 2, 3], np.ones((2, 8))), r"expected shape \(3, 8\)"),
    (lambda c: c.apply_gradients("user", [1, 2], np.array([[np.nan] * 8, [0] * 8])), "NaN/Inf"),
    (lambda c: c.assign("item", [1], np.array([[np.inf, 0, 0, 0]])), "NaN/Inf"),
    (lambda c: c.apply_gradients("user", [1], np.ones((1, 8)), learning_rates=[0.1]), "one per segment"),
    (lambda c: c.create_tables({"t": {"dim": "8"}}), "dim"),
    (lambda c: c.create_dense({"d": {"shape": [0], "optimizer": {"type": "sgd"}}}), "positive ints"),
    (lambda c: PSClient(c.addresses, max_message_bytes=1 << 20).lookup("user", np.arange(80_000)), "split the batch"),
])
def test_client_rejects_bad_input_before_sending(cluster, call, message):
    client = cluster["client"]
    before = snapshot(client)
    with pytest.raises(ValueError, match=message):
        call(client)
    after = snapshot(client)
    assert after[1] == before[1]
    for t in before[0]:
        np.testing.assert_array_equal(after[0][t], before[0][t])


def _update(table, ids, values, dtype="<f4"):
    return ps_pb2.TableUpdate(table=table, ids=np.asarray(ids, "<i8").tobytes(),
                              values=np.asarray(values, dtype).tobytes())


def _apply(*updates):
    return ps_pb2.ApplyGradientsRequest(tables=list(updates)).SerializeToString()


GOOD = _update("item", [2, 4], np.ones((2, 4)))  # shard 0 owns even ids
BAD_REQUESTS = [
    ("ApplyGradients", _apply(_update("nope", [2], np.ones((1, 4)))), grpc.StatusCode.NOT_FOUND,
     "unknown table 'nope'"),
    ("ApplyGradients", _apply(_update("item", [2], np.ones((1, 8)))), grpc.StatusCode.INVALID_ARGUMENT,
     "expected 1 ids x dim 4"),
    ("Assign", ps_pb2.UpdateRequest(tables=[_update("item", [2, 4, 6], np.ones((2, 4)))]).SerializeToString(),
     grpc.StatusCode.INVALID_ARGUMENT, "expected 3 ids x dim 4"),
    ("ApplyGradients", _apply(GOOD, _update("item", [6], [[0, np.nan, 0, 0]])), grpc.StatusCode.INVALID_ARGUMENT,
     "NaN/Inf"),
    ("AssignAdd", ps_pb2.UpdateRequest(tables=[GOOD, _update("item", [6], [[np.inf, 0, 0, 0]])]).SerializeToString(),
     grpc.StatusCode.INVALID_ARGUMENT, "NaN/Inf"),
    ("Lookup", ps_pb2.LookupRequest(tables=[ps_pb2.TableIds(table="item", ids=b"\x02" * 13)]).SerializeToString(),
     grpc.StatusCode.INVALID_ARGUMENT, "13 bytes, not a multiple of 8"),
    ("ApplyGradients", b"\xff\xfe garbage \x00\x01", grpc.StatusCode.INVALID_ARGUMENT,
     "malformed ApplyGradientsRequest"),
    ("ApplyGradients", _apply(GOOD)[:-7], grpc.StatusCode.INVALID_ARGUMENT, "malformed ApplyGradientsRequest"),
    ("ApplyGradients", _apply(GOOD, _update("item", [3], np.ones((1, 4)))), grpc.StatusCode.FAILED_PRECONDITION,
     "do not belong to shard 0"),
    ("ApplyGradients", _apply(_update("item", np.arange(0, 2 * 200_000, 2), np.ones((200_000, 4)))),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    ("Restore", ps_pb2.RestoreRequest(checkpoint_path="/nonexistent/ckpt-1").SerializeToString(),
     grpc.StatusCode.FAILED_PRECONDITION, "does not exist"),
    ("DenseCreate", ps_pb2.DenseCreateRequest(variables=[ps_pb2.DenseVariable(
        name="dense/x", shape=[2], optimizer=ps_pb2.Optimizer(type="no-such-optimizer"))]).SerializeToString(),
     grpc.StatusCode.INVALID_ARGUMENT, "no-such-optimizer"),  # md5("dense/x") mod 2 = shard 0
    ("DenseCreate", ps_pb2.DenseCreateRequest(variables=[ps_pb2.DenseVariable(
        name="x", shape=[2], optimizer=ps_pb2.Optimizer(type="sgd"))]).SerializeToString(),
     grpc.StatusCode.FAILED_PRECONDITION, "dense variable 'x' belongs to shard 1"),
]


@pytest.mark.parametrize("method, payload, code, message", BAD_REQUESTS,
                         ids=[f"{m}-{i}" for i, (m, *_r) in enumerate(BAD_REQUESTS)])
def test_server_rejects_bad_requests_and_keeps_its_state(cluster, method, payload, code, message):
    client, shard0 = cluster["client"], cluster["shards"][0]
    before = snapshot(client)
    err = rpc_error(shard0.address, method, payload)
    assert err.code() is code, err.details()
    assert message in err.details()
    after = snapshot(client)
    assert after[1] == before[1]
    for t in before[0]:
        np.testing.assert_array_equal(after[0][t], before[0][t])
    assert shard0.proc.poll() is None
    assert client.health()[0]["serving"]


def test_metrics_endpoint_counts_requests_and_rows(cluster):
    shard = cluster["shards"][0]
    cluster["client"].lookup("item", [0, 2])
    text = urllib.request.urlopen(f"http://{shard.metrics}/metrics", timeout=10).read().decode()
    assert re.search(r'monolith_ps_requests_total\{code="OK",method="Lookup",shard="0"\} [1-9]', text)
    assert 'monolith_ps_request_seconds_bucket{le="0.001",method="Lookup",shard="0"}' in text
    assert re.search(r'monolith_ps_table_rows\{shard="0",table="item"\} \d', text)
    assert "process_resident_memory_bytes" in text


def test_aio_server_model_serves_the_same_service(cluster):
    aio = cluster["aio"]
    with PSClient([aio.address]) as client:
        client.wait_until_ready(20)
        assert client.health()[0]["server_model"] == "aio"
        client.create_tables({"item": ITEM})
        client.apply_gradients("item", [1, 1, -2], np.ones((3, 4)))
        np.testing.assert_allclose(client.lookup("item", [1, -2, 7]), [[0.9] * 4, [0.95] * 4, [0] * 4], rtol=1e-6)
        err = rpc_error(aio.address, "Lookup", b"\x0a\xff\xff")
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "malformed LookupRequest" in err.details()


def test_sigterm_stops_gracefully(cluster):
    group, aio = cluster["group"], cluster["aio"]
    assert group.stop(aio.proc) == 0
    assert "stopped" in group.log_of(aio.proc)


def test_a_taken_port_is_a_clear_start_up_error(processes):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start_shard(processes, 0, 1, port=port, extra=["--metrics-port", "-1"])
        assert proc.wait(60) == 1
    assert f"cannot bind 127.0.0.1:{port}: port in use" in processes.log_of(proc)
