"""Online sync, training PS -> serving PS (ps/service/sync_sender.py, serving/sync_receiver.py): real gRPC on
loopback, training and serving shards in this process (one test kills a real `monolith serve-ps`)."""
from __future__ import annotations

import argparse
import contextlib
import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from protos import ps_pb2
from ps.client.client import PSClient
from ps.config import ServerConfig
from ps.errors import PSFailedPrecondition
from ps.service.server import serve
from ps.service.servicer import ParameterServerServicer
from ps.service.sync_sender import SYNC_METHOD, SyncConfig, SyncSender
from ps.store.shard_state import ShardState
from ps.store.table import EmbeddingTable
from services.export_layout import ASSETS_EXTRA, PS_SHARD_DIR
from services.ports import free_port
from serving.serving_ps import ServingPSServicer
from serving.sync_receiver import TrainingSync
from tests.processes import wait_for
from tests.ps_cluster import start_shard, wait_ready
from tests.serving_cluster import start_serve_ps, wait_address

TABLES = {"user": {"dim": 8, "optimizer": {"type": "adagrad", "learning_rate": 0.1}},
          "item": {"dim": 4, "optimizer": {"type": "sgd", "learning_rate": 0.5},
                   "expire_time_days": 1}}


class Server:
    """A servicer served on a loopback port in a thread of this process."""

    def __init__(self, handlers, port: int = 0) -> None:
        self.stop = threading.Event()
        ready = threading.Event()
        self.port = 0

        def on_ready(p: int) -> None:
            self.port = p
            ready.set()

        self.thread = threading.Thread(target=serve, args=(handlers, ServerConfig(port=port, grace_s=0)),
                                       kwargs=dict(stop=self.stop, on_ready=on_ready), daemon=True)
        self.thread.start()
        assert ready.wait(30), "server did not start"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def training_shards(n: int) -> list[ShardState]:
    shards = [ShardState(k, n) for k in range(n)]
    for s in shards:
        for name, config in TABLES.items():
            s.create_table(name, config)
    return shards


def serving_shard(j: int, m: int) -> tuple[ShardState, ServingPSServicer]:
    state = ShardState(j, m)
    for name, config in TABLES.items():
        state.create_table(name, config)
    return state, ServingPSServicer(state, TrainingSync(state))


def train(shards: list[ShardState], table: str, ids: np.ndarray, grads: np.ndarray, update_time: int = 0) -> None:
    """ApplyGradients as a client would route it (id mod the training shard count)."""
    n = len(shards)
    for k, s in enumerate(shards):
        sel = np.mod(ids, n) == k
        s.table(table).apply_gradients(ids[sel], grads[sel], update_time=update_time)


def training_rows(shards: list[ShardState], table: str, ids: np.ndarray) -> np.ndarray:
    n = len(shards)
    out = np.zeros((len(ids), shards[0].table(table).dim), np.float32)
    for k, s in enumerate(shards):
        sel = np.mod(ids, n) == k
        out[sel] = s.table(table).lookup(ids[sel])
    return out


@pytest.fixture
def stack():
    """Servers, senders and clients a test starts, all closed at its end."""
    things: list = []
    yield things
    for thing in reversed(things):
        with contextlib.suppress(Exception):
            thing.close()


def serve_serving(stack, m: int, ports: list[int] | None = None):
    states, servers = [], []
    for j in range(m):
        state, servicer = serving_shard(j, m)
        server = Server(servicer.handlers(), port=ports[j] if ports else 0)
        stack.append(server)
        states.append(state)
        servers.append(server)
    return states, servers


def test_take_changes_gives_each_change_once_and_keep_changes_hands_them_back():
    table = EmbeddingTable.from_dict(TABLES["item"])
    table.assign(np.arange(10), np.ones((10, 4), np.float32), update_time=1)
    table.track_changes()  # rows present before tracking count as changed
    assert sorted(table.take_changes().ids) == list(range(10))
    assert len(table.take_changes().ids) == 0
    table.apply_gradients(np.array([3, 3, 12]), np.ones((3, 4), np.float32), update_time=3 * 86400)
    got = table.take_changes()
    assert sorted(got.ids) == [3, 12]
    np.testing.assert_array_equal(got.values, table.lookup(got.ids))
    assert table.evict_expired() == 9  # all but 3
    table.assign(np.array([5]), np.ones((1, 4), np.float32), update_time=3 * 86400)  # evicted, then back
    got = table.take_changes()
    assert list(got.ids) == [5] and sorted(got.removed) == [0, 1, 2, 4, 6, 7, 8, 9]
    table.keep_changes(got.ids, got.removed)  # undelivered: the next take has them again
    again = table.take_changes()
    assert list(again.ids) == [5] and sorted(again.removed) == sorted(got.removed)


def test_a_burst_is_on_the_serving_shards_after_one_interval_exactly(stack):
    """2 training shards -> 3 serving shards (routing by id mod 3), float32: every touched row equal."""
    trainers = training_shards(2)
    _states, servers = serve_serving(stack, 3)
    addresses = [s.address for s in servers]
    senders = [SyncSender(t, SyncConfig(addresses, interval_s=0.3)) for t in trainers]
    for s in senders:
        stack.append(s)
        s.start()
    client = PSClient(addresses)
    stack.append(client)
    rng = np.random.default_rng(0)
    ids = rng.choice(1 << 40, 3000, replace=False).astype(np.int64) - (1 << 39)  # negative ids too
    for _step in range(5):  # a burst of updates, repeated ids and both tables
        batch = rng.choice(ids, 2000)
        train(trainers, "user", batch, rng.normal(size=(2000, 8)).astype(np.float32))
        train(trainers, "item", batch[:500], rng.normal(size=(500, 4)).astype(np.float32), update_time=100)
    rounds = [s.rounds for s in senders]
    wait_for(lambda: all(s.rounds >= r + 2 for s, r in zip(senders, rounds)), timeout=20, what="two sync rounds")
    served = client.lookup_many({"user": ids, "item": ids})
    np.testing.assert_array_equal(served["user"], training_rows(trainers, "user", ids))
    np.testing.assert_array_equal(served["item"], training_rows(trainers, "item", ids))
    health = client.health()
    assert all(sorted(h["sync_versions"]) == [0, 1] for h in health), health
    assert all(time.time() - h["sync_time"] < 10 for h in health)
    lag = REGISTRY.get_sample_value("sync_lag_seconds", {"shard": "2"})
    assert lag is not None and 0 <= lag < 10


def test_float16_rows_and_evicted_ids(stack):
    """float16 on request (values within float16 rounding; a table part beyond its range goes as float32),
    and ids evicted on the training shard vanish from the serving shards."""
    (trainer,) = training_shards(1)
    states, servers = serve_serving(stack, 2)
    sender = SyncSender(trainer, SyncConfig([s.address for s in servers], interval_s=60, float16=True))
    stack.append(sender)
    old, fresh = np.arange(0, 50, dtype=np.int64), np.arange(50, 100, dtype=np.int64)
    table = trainer.table("item")
    table.apply_gradients(old, np.ones((50, 4), np.float32), update_time=1)
    table.apply_gradients(fresh, np.full((50, 4), 0.3, np.float32), update_time=1)
    assert set(sender.sync_once().values()) == {"full"}  # first contact: everything
    table.apply_gradients(fresh, np.full((50, 4), -0.7, np.float32), update_time=3 * 86400)
    assert table.evict_expired() == 50
    trainer.table("user").assign(old, np.full((50, 8), 1e6, np.float32))  # beyond float16: sent as float32
    assert set(sender.sync_once().values()) == {"sent"}
    for j, state in enumerate(states):
        np.testing.assert_array_equal(state.table("user").lookup(old[old % 2 == j]), np.full((25, 8), 1e6))
        mine = fresh[fresh % 2 == j]
        np.testing.assert_allclose(state.table("item").lookup(mine), table.lookup(mine), rtol=1e-3)
        assert not state.table("item").contains(old[old % 2 == j]).any()
        assert state.table("item").size == len(mine)


def test_a_lost_answer_continues_from_the_version_applied_not_a_full_resync(stack):
    (trainer,) = training_shards(1)
    states, servers = serve_serving(stack, 1)
    sender = SyncSender(trainer, SyncConfig([servers[0].address], interval_s=60))
    stack.append(sender)
    ids = np.arange(100, dtype=np.int64)
    trainer.table("user").assign(ids, np.ones((100, 8), np.float32))
    assert sender.sync_once() == {0: "full"}
    before = sender.peers[0].acked
    trainer.table("user").assign(ids[:10], np.full((10, 8), 2, np.float32))
    assert sender.sync_once() == {0: "sent"}
    peer = sender.peers[0]
    peer.acked, peer.unconfirmed = before, peer.acked  # as if that answer had timed out after the apply
    trainer.table("user").assign(ids[10:20], np.full((10, 8), 3, np.float32))
    assert sender.sync_once() == {0: "sent"}
    np.testing.assert_array_equal(states[0].table("user").lookup(ids), trainer.table("user").lookup(ids))


def test_changes_of_failed_rounds_arrive_with_the_next_round_that_gets_through(stack):
    """The serving shard is unreachable for two rounds (its server stops; the shard keeps its state): those
    rounds' changes are kept and arrive in one incremental message, with no full resync."""
    (trainer,) = training_shards(1)
    state, servicer = serving_shard(0, 1)
    server = Server(servicer.handlers())
    sender = SyncSender(trainer, SyncConfig([server.address], interval_s=60, timeout_s=2))
    stack.append(sender)
    ids = np.arange(300, dtype=np.int64)
    trainer.table("user").assign(ids, np.ones((300, 8), np.float32))
    assert sender.sync_once() == {0: "full"}
    server.close()
    for k, part in enumerate((ids[:100], ids[100:200])):
        trainer.table("user").apply_gradients(part, np.full((100, 8), 0.5, np.float32))
        sender.peers[0].retry_at = 0.0
        assert sender.sync_once() == {0: "failed"}, k
    assert not np.array_equal(state.table("user").lookup(ids[:200]), trainer.table("user").lookup(ids[:200]))
    stack.append(Server(servicer.handlers(), port=server.port))
    outcomes = []

    def delivered() -> bool:
        sender.peers[0].retry_at = 0.0
        outcomes.append(sender.sync_once()[0])
        return outcomes[-1] == "sent"

    wait_for(delivered, timeout=20, interval=0.3, what="the serving shard to take the kept changes")
    assert "full" not in outcomes
    np.testing.assert_array_equal(state.table("user").lookup(ids), trainer.table("user").lookup(ids))


def test_a_round_bigger_than_a_message_goes_in_parts(stack):
    """64 KiB messages: a full resync and an incremental round of ~400 KiB each arrive whole in parts."""
    (trainer,) = training_shards(1)
    state, servicer = serving_shard(0, 1)
    server = Server(servicer.handlers())
    stack.append(server)
    sender = SyncSender(trainer, SyncConfig([server.address], interval_s=60, max_message_bytes=1 << 16))
    stack.append(sender)
    ids = np.arange(10000, dtype=np.int64)
    trainer.table("user").assign(ids, np.ones((10000, 8), np.float32))
    assert sender.sync_once() == {0: "full"}
    assert servicer.requests["SyncRows"] >= 6
    trainer.table("user").apply_gradients(ids, np.full((10000, 8), 0.5, np.float32))
    trainer.table("item").assign(ids[:3000], np.ones((3000, 4), np.float32))
    assert sender.sync_once() == {0: "sent"}
    assert servicer.requests["SyncRows"] >= 12
    for name in TABLES:
        np.testing.assert_array_equal(state.table(name).lookup(ids), trainer.table(name).lookup(ids))
    assert state.table("item").size == 3000


def test_a_batch_is_applied_atomically_across_tables(stack):
    """Readers looping Lookup over both tables never see rows of two batches mixed. (Without the receiver's
    lock, only each table's own write lock, they do, several times per run: the reader takes the tables in the
    other order than the batch.)"""
    (trainer,) = training_shards(1)
    _states, servers = serve_serving(stack, 1)
    sender = SyncSender(trainer, SyncConfig([servers[0].address], interval_s=60))
    stack.append(sender)
    client = PSClient([servers[0].address])
    stack.append(client)
    ids = np.arange(50000, dtype=np.int64)
    mixed, reads, done = [], [0], threading.Event()

    def reader() -> None:
        while not done.is_set():
            rows = client.lookup_many({"item": ids, "user": ids})  # the other order than a batch's (user, item)
            seen = np.unique(np.concatenate([rows["user"].ravel(), rows["item"].ravel()]))
            reads[0] += 1
            if len(seen) != 1:
                mixed.append(seen[:5])

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for v in range(1, 17):
        trainer.table("user").assign(ids, np.full((len(ids), 8), v, np.float32))
        trainer.table("item").assign(ids, np.full((len(ids), 4), v, np.float32))
        sender.sync_once()
        if v == 1:
            for t in threads:
                t.start()
    done.set()
    for t in threads:
        t.join(30)
    assert reads[0] > 0 and not mixed, mixed[:3]
    np.testing.assert_array_equal(client.lookup("item", ids[:10]), np.full((10, 4), 16, np.float32))


def _raw_sync(address: str, request: ps_pb2.SyncRowsRequest) -> ps_pb2.SyncRowsResponse:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(SYNC_METHOD, request_serializer=ps_pb2.SyncRowsRequest.SerializeToString,
                                   response_deserializer=ps_pb2.SyncRowsResponse.FromString)
        return call(request, timeout=10)


@pytest.mark.parametrize("table, n, dim, ids_from, code, message", [
    ("user", 3, 7, 0, grpc.StatusCode.INVALID_ARGUMENT, "dim 8"),
    ("nope", 3, 8, 0, grpc.StatusCode.NOT_FOUND, "unknown table 'nope'"),
    ("user", 3, 8, 1, grpc.StatusCode.FAILED_PRECONDITION, "do not belong to shard 0"),
])
def test_bad_sync_input_is_refused_whole(stack, table, n, dim, ids_from, code, message):
    """One bad table part refuses the whole message with its status; the good part is not applied either."""
    state, servicer = serving_shard(0, 2)
    server = Server(servicer.handlers())
    stack.append(server)
    request = ps_pb2.SyncRowsRequest(source_shard=0, source_num_shards=1, version=5, full=True, last_part=True)
    good = np.arange(0, 6, 2, dtype=np.int64)
    request.tables.add(table="item", ids=good.tobytes(), values=np.ones((3, 4), np.float32).tobytes())
    bad = np.arange(ids_from, ids_from + 2 * n, 2, dtype=np.int64)
    request.tables.add(table=table, ids=bad.tobytes(), values=np.ones((n, dim), np.float32).tobytes())
    with pytest.raises(grpc.RpcError) as err:
        _raw_sync(server.address, request)
    assert err.value.code() == code and message in err.value.details(), err.value.details()
    assert state.table("item").size == 0 and state.table("user").size == 0
    assert servicer.health(ps_pb2.HealthRequest()).sync_version == 0
    # an incremental batch on top of nothing is not applied: the answer asks for a full resync
    request = ps_pb2.SyncRowsRequest(source_shard=0, source_num_shards=1, version=6, base_version=5, last_part=True)
    assert _raw_sync(server.address, request) == ps_pb2.SyncRowsResponse(applied=False, known_version=0)
    client = PSClient([server.address], retries=0)
    stack.append(client)
    with pytest.raises(PSFailedPrecondition, match="only from the online sync"):  # the PS update RPCs stay refused
        client.assign("item", good, np.ones((3, 4), np.float32))


def test_a_serving_shard_down_costs_training_nothing_and_catches_up(stack):
    """The serving port accepts connections but never answers (a hung host): training goes on through the
    PS RPCs while every sync try fails; when a real serving shard takes the port, the rows kept meanwhile
    arrive."""
    (trainer,) = training_shards(1)
    training = Server([ParameterServerServicer(trainer).handler()])
    stack.append(training)
    port = free_port()
    hung = socket.socket()
    hung.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hung.bind(("127.0.0.1", port))
    hung.listen(8)
    stack.append(hung)
    client = PSClient([training.address])
    stack.append(client)
    ids = np.arange(1000, dtype=np.int64)
    client.apply_gradients("user", ids, np.full((1000, 8), 0.01, np.float32))  # kernels compiled or loaded
    sender = SyncSender(trainer, SyncConfig([f"127.0.0.1:{port}"], interval_s=0.2, timeout_s=3, max_backoff_s=0.5))
    stack.append(sender)
    sender.start()
    steps = 0
    started = time.monotonic()
    while time.monotonic() - started < 2 or not sender.peers[0].failures:
        client.apply_gradients("user", ids, np.full((1000, 8), 0.01, np.float32))
        steps += 1
    assert steps >= 5 and sender.rounds >= 2
    hung.close()
    state, servicer = serving_shard(0, 1)
    stack.append(Server(servicer.handlers(), port=port))
    wait_for(lambda: state.table("user").size == 1000 and np.array_equal(
        state.table("user").lookup(ids), trainer.table("user").lookup(ids)), timeout=20, what="the catch-up")


def test_a_killed_serving_ps_restarts_from_its_export_and_catches_up(processes, tmp_path):
    """Real processes: `monolith ps --sync-interval-s` feeding `monolith serve-ps --update-policy training-sync`.
    kill -9 of the serving PS; training goes on; restarted on its port from the (older) export, the serving PS
    gets a full resync and again serves exactly the training rows."""
    ids = np.arange(500, dtype=np.int64)
    (exported,) = training_shards(1)
    exported.table("user").assign(ids, np.ones((500, 8), np.float32))
    export = tmp_path / "ps_0" / "1"
    exported.save(str(export / ASSETS_EXTRA / PS_SHARD_DIR), step=1)
    serving_args = [str(export), "--update-policy", "training-sync", "--port", str(free_port())]
    serving = start_serve_ps(processes, *serving_args)
    training = start_shard(processes, 0, 1, extra=["--sync-interval-s", "0.3", "--sync-serving-ps",
                                                   f"127.0.0.1:{serving_args[-1]}"])
    trainer = PSClient([wait_ready(processes, training).address])
    served = PSClient([wait_address(processes, serving)], retries=0)
    try:
        trainer.create_tables(TABLES)
        trainer.assign("user", ids, np.ones((500, 8), np.float32))

        def caught_up() -> bool:
            return np.array_equal(served.lookup("user", ids), trainer.lookup("user", ids))

        trainer.apply_gradients("user", ids, np.full((500, 8), 0.5, np.float32))
        wait_for(caught_up, timeout=30, what="the serving PS to show the trained rows")
        processes.stop(serving, sig=9)
        for _ in range(3):  # training goes on with the serving PS down
            trainer.apply_gradients("user", ids[:100], np.full((100, 8), 0.5, np.float32))
        serving = start_serve_ps(processes, *serving_args)
        wait_address(processes, serving)
        wait_for(caught_up, timeout=30, what="the restarted serving PS to catch up")
        (health,) = served.health()
        assert health["uptime_s"] < 60 and list(health["sync_versions"]) == [0]
    finally:
        trainer.close()
        served.close()


def test_serve_ps_takes_the_newest_version_of_a_sub_model_directory(tmp_path):
    """A long-lived serving PS (a StatefulSet pod) names `ps_<i>`: it loads the newest complete version there."""
    from ps.errors import CheckpointError
    from serving.serving_ps import newest_export

    base = tmp_path / "ps_0"
    with pytest.raises(CheckpointError, match="holds no export version"):
        base.mkdir()
        newest_export(base)
    for version in ("5", "12", ".tmp-13-ab12", "14"):  # 14 has no saved_model.pb yet: not a version
        (base / version / ASSETS_EXTRA).mkdir(parents=True)
    for version in ("5", "12", ".tmp-13-ab12"):
        (base / version / "saved_model.pb").write_bytes(b"")
    assert newest_export(base) == base / "12"
    assert newest_export(base / "5") == base / "5"


def test_monolith_run_hands_the_sync_flags_to_its_ps():
    """A scheduled PS (`monolith run` with the MLP_* environment) gets the sync flags `monolith ps` takes."""
    from launch import run_role
    from ps.__main__ import add_arguments as ps_arguments
    from ps.__main__ import config_of
    from services.cluster_spec import ClusterSpec, mlp_environment

    layout = {"ps": [("10.0.0.1", 7000), ("10.0.0.2", 7000)], "worker": [("10.0.0.3", 7100)]}
    spec = ClusterSpec.from_environ(mlp_environment(layout, "ps", 1))
    parser = argparse.ArgumentParser()
    run_role.add_arguments(parser)
    args = parser.parse_args(["--sync-interval-s", "2.5", "--sync-serving-ps", "s0:8600,s1:8600,s2:8600",
                              "--sync-float16", "--dense-sync-interval-s", "7",
                              "--sync-entry-servers", "e0:8500,e1:8500"])
    cmd = run_role.service_command(spec, args)
    ps_parser = argparse.ArgumentParser()
    ps_arguments(ps_parser)
    config = config_of(ps_parser.parse_args(cmd[cmd.index("ps") + 1:]))
    assert (config.sync_interval_s, config.sync_serving_ps, config.sync_float16) == (
        2.5, ("s0:8600", "s1:8600", "s2:8600"), True)
    assert (config.dense_sync_interval_s, config.sync_entry_servers) == (7.0, ("e0:8500", "e1:8500"))
    with pytest.raises(ValueError, match="needs --sync-serving-ps"):
        config_of(ps_parser.parse_args(["--port", "1", "--shard-index", "0", "--num-shards", "1",
                                        "--sync-interval-s", "1"]))
    with pytest.raises(ValueError, match="needs --sync-entry-servers"):
        config_of(ps_parser.parse_args(["--port", "1", "--shard-index", "0", "--num-shards", "1",
                                        "--dense-sync-interval-s", "1"]))
    with pytest.raises(ValueError, match="must be host:port"):
        config_of(ps_parser.parse_args(["--port", "1", "--shard-index", "0", "--num-shards", "1",
                                        "--dense-sync-interval-s", "1", "--sync-entry-servers", "entry"]))


# -- dense sync: training PS -> entry servers ---------------------------------------------------------------
def _predict(address: str, examples: list[bytes]) -> dict[str, np.ndarray]:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto(np.array(examples, dtype=object)))
    with grpc.insecure_channel(address) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    return {head: tf.make_ndarray(response.outputs[head]) for head in ("ctr", "score")}


def test_entry_server_names_stand_for_all_their_addresses():
    """A name (a headless Service of entry replicas) is every address it resolves to, each once; one that does
    not resolve now is none."""
    from ps.service.dense_sync_sender import resolve_entries

    table = {"entry": [(socket.AF_INET, "10.0.0.5"), (socket.AF_INET, "10.0.0.6"), (socket.AF_INET6, "fd00::7")],
             "10.0.0.5": [(socket.AF_INET, "10.0.0.5")]}

    def resolve(host: str, port: int) -> list[tuple[int, str]]:
        if host not in table:
            raise socket.gaierror(f"unknown host {host}")
        return table[host]

    assert resolve_entries(["entry:8500", "10.0.0.5:8500", "gone:8500"], resolve) == [
        "10.0.0.5:8500", "10.0.0.6:8500", "[fd00::7]:8500"]
    assert resolve_entries(["127.0.0.1:8500"]) == ["127.0.0.1:8500"]


def _raw_sync_dense(address: str, request: ps_pb2.SyncDenseRequest) -> ps_pb2.SyncDenseResponse:
    from ps.service.dense_sync_sender import SYNC_DENSE_METHOD

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(SYNC_DENSE_METHOD, request_serializer=ps_pb2.SyncDenseRequest.SerializeToString,
                                   response_deserializer=ps_pb2.SyncDenseResponse.FromString)
        return call(request, timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dense_values_reach_the_entry_server_and_its_predictions(stack, processes, trained_on_3_shards,
                                                                 distributed_export, tmp_path):
    """The model of the serving fixtures: its training shards (restored in this process from the exported
    checkpoint) take a dense SGD step; after one interval the real `monolith serve --dense-sync` predicts what
    `Estimator.predict` on those training shards predicts (to 1e-6, through TF Serving's stub). A message
    naming a variable the entry does not know, or with a wrong shape, is refused whole. The entry killed -9:
    training's dense pushes go on, and the restarted entry (exported values again) catches up."""
    from ps.service.dense_sync_sender import DenseSyncConfig, DenseSyncSender
    from serving.serving_ps import ReadOnly, ServingPSServicer, load_shard
    from tests.scrape import scrape
    from tests.serving_cluster import metrics_address, start_serve
    from tests.serving_fixtures import STEPS
    from tests.tiny_models import ServingDNN
    from worker.runtime.estimator import Estimator
    from worker.runtime.run_config import RunConfig

    examples = trained_on_3_shards.examples[:128]
    trainers = [ShardState(k, 3) for k in range(3)]
    for state in trainers:
        state.restore(f"{trained_on_3_shards.model_dir}/ckpt-{STEPS[-1]}")
    training = [Server([ParameterServerServicer(s).handler()]) for s in trainers]
    serving = []
    for i in range(2):
        state = load_shard(distributed_export[f"ps_{i}"])
        serving.append(Server(ServingPSServicer(state, ReadOnly(i)).handlers()))
    stack.extend(training + serving)
    entry_port = free_port()
    entry_args = [str(Path(distributed_export["entry"]).parents[1]), "--port", str(entry_port), "--dense-sync",
                  "--ps-addresses", ",".join(s.address for s in serving), "--metrics-port", "0"]
    entry = start_serve(processes, *entry_args)
    client = PSClient([s.address for s in training])
    stack.append(client)
    senders = [DenseSyncSender(t, DenseSyncConfig([f"127.0.0.1:{entry_port}"], interval_s=0.3, timeout_s=3,
                                                  max_backoff_s=1)) for t in trainers]
    holders = [s for s, t in zip(senders, trainers) if t.dense]
    assert holders and sum(len(t.dense) for t in trainers) >= 4
    address = wait_address(processes, entry)
    exported = _predict(address, examples)
    np.testing.assert_allclose(exported["ctr"], [p["ctr"] for p in trained_on_3_shards.reference[:128]], atol=1e-6)
    for s in senders:
        stack.append(s)
        s.start()
    estimator = Estimator(ServingDNN(), RunConfig(model_dir=str(tmp_path / "predict"),
                                                  ps_addresses=[s.address for s in training]))
    stack.append(estimator)
    rng = np.random.default_rng(3)
    shapes = {name: shape for t in trainers for name, shape, _v in t.dense_pull([])}

    def dense_step() -> None:  # a real SGD step on the training shards' dense variables
        client.dense_push({n: rng.normal(size=shape).astype(np.float32) for n, shape in shapes.items()},
                          learning_rate=0.05)

    def served_equals_training() -> bool:
        rounds = [s.rounds for s in holders]
        wait_for(lambda: all(s.rounds >= r + 2 for s, r in zip(holders, rounds)), timeout=30, what="two rounds")
        reference = list(estimator.predict())[:128]
        served = _predict(address, examples)
        for head in ("ctr", "score"):
            np.testing.assert_allclose(served[head], [p[head] for p in reference], rtol=0, atol=1e-6)
        return True

    dense_step()
    assert served_equals_training()
    assert np.abs(_predict(address, examples)["ctr"] - exported["ctr"]).max() > 1e-3  # the step mattered
    metrics = scrape(int(metrics_address(processes, entry).split(":")[1]))
    assert metrics.value("dense_sync_version", model="default") > 0
    assert 0 <= metrics.value("dense_sync_lag_seconds", model="default") < 10

    # bad input: refused whole, with the variable named; nothing of it applied
    for s in senders:
        s.close()
    before = _predict(address, examples)
    name = sorted(shapes)[0]
    good = ps_pb2.SyncDenseRequest(source_shard=0, source_num_shards=3, version=int(time.time() * 1000) + 10**6)
    good.variables.add(name=name, shape=list(shapes[name]), values=np.zeros(shapes[name], np.float32).tobytes())
    for bad, message in ((("dense_9999", [2]), "'dense_9999' is not in model"),
                         ((sorted(shapes)[1], [1, 1]), f"{sorted(shapes)[1]!r}: shape [1, 1] sent")):
        request = ps_pb2.SyncDenseRequest()
        request.CopyFrom(good)
        request.variables.add(name=bad[0], shape=bad[1], values=np.zeros(bad[1], np.float32).tobytes())
        with pytest.raises(grpc.RpcError) as err:
            _raw_sync_dense(address, request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details(), \
            err.value.details()
    np.testing.assert_array_equal(_predict(address, examples)["ctr"], before["ctr"])

    # the entry down: training goes on; restarted (exported values), it catches up from the next round
    senders = [DenseSyncSender(t, DenseSyncConfig([f"127.0.0.1:{entry_port}"], interval_s=0.3, timeout_s=3,
                                                  max_backoff_s=1)) for t in trainers]
    holders = [s for s, t in zip(senders, trainers) if t.dense]
    for s in senders:
        stack.append(s)
        s.start()
    processes.stop(entry, sig=9)
    steps = 0
    def failures() -> list[int]:
        return [e.failures for s in holders for e in s.entries.values()] or [0]

    while steps < 5 or not all(failures()):
        dense_step()
        steps += 1
    entry = start_serve(processes, *entry_args)
    address = wait_address(processes, entry)
    wait_for(lambda: not any(failures()), timeout=30, what="the entry to take syncs")
    assert served_equals_training()


@pytest.mark.slow
def test_a_predict_sees_every_dense_value_of_a_message_old_or_all_new(stack, trained_on_3_shards, distributed_export):
    """Readers loop Predict on the entry (in this process) while dense messages alternate two value sets: every
    answer is the prediction of one set, never of a mix. A version not after the one held is not applied."""
    from ps.store.shard_state import ShardState as State
    from serving.dense_sync_receiver import DenseSyncReceiver
    from serving.model_versions import ModelVersions
    from serving.servable import Servable
    from serving.serving_ps import ReadOnly, ServingPSServicer, load_shard
    from tests.serving_fixtures import STEPS

    serving = [Server(ServingPSServicer(load_shard(distributed_export[f"ps_{i}"]), ReadOnly(i)).handlers())
               for i in range(2)]
    stack.extend(serving)
    client = PSClient([s.address for s in serving])
    stack.append(client)
    base = Path(distributed_export["entry"]).parent
    versions = ModelVersions("default", base, lambda v, p: Servable("default", v, p, client), lambda s, p: 0)
    assert versions.refresh()
    receiver = DenseSyncReceiver(versions)
    restored = State(0, 1)
    restored.restore(f"{trained_on_3_shards.model_dir}/ckpt-{STEPS[-1]}", tables=[])
    value_sets = [{n: v.reshape(shape) for n, shape, v in restored.dense_pull([])}]
    value_sets.append({n: v * 1.5 + 0.1 for n, v in value_sets[0].items()})
    version = [int(time.time() * 1000)]

    def send(values: dict[str, np.ndarray]) -> ps_pb2.SyncDenseResponse:
        version[0] += 1
        request = ps_pb2.SyncDenseRequest(source_shard=0, source_num_shards=1, version=version[0])
        for n, v in values.items():
            request.variables.add(name=n, shape=list(v.shape), values=v.astype(np.float32).tobytes())
        return receiver.sync_dense(request)

    inputs = {"examples": np.array(trained_on_3_shards.examples[:64], dtype=object)}
    expected = []
    for values in value_sets:
        assert send(values).applied
        expected.append(versions.get().predict("serving_default", inputs)["ctr"])
    assert np.abs(expected[0] - expected[1]).max() > 1e-2
    mixed, reads, done = [], [0], threading.Event()

    def reader() -> None:
        while not done.is_set():
            got = versions.get().predict("serving_default", inputs)["ctr"]
            reads[0] += 1
            if min(np.abs(got - e).max() for e in expected) > 1e-6:
                mixed.append(got[:3])

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for k in range(60):
        send(value_sets[k % 2])
    done.set()
    for t in threads:
        t.join(30)
    assert reads[0] > 0 and not mixed, mixed[:3]
    stale = ps_pb2.SyncDenseRequest(source_shard=0, source_num_shards=1, version=version[0] - 5)
    assert receiver.sync_dense(stale) == ps_pb2.SyncDenseResponse(applied=False, known_version=version[0],
                                                                    model_version=versions.get().version)
