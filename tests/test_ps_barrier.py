"""Barriers and bounded global-step claims on PS shard 0 (issue 11, bug 1).

Workers meet at a barrier before the chief's final checkpoint, evaluation and summary, and the chief's
"ready" signal is a barrier too (it used to be a fake dense variable that ended up in checkpoints).
"""
import threading
import time

import grpc
import numpy as np
import pytest

from protos import ps_pb2
from ps.client import PSClient
from ps.errors import BarrierTimeout, PSAlreadyExists, WrongShard
from ps.persist import checkpoint as ckpt
from ps.store.shard_state import ShardState
from tests.ps_cluster import start_shard, wait_ready
from tests.tiny_models import TinyDNN
from worker.model import Estimator, RunConfig, SgdOptimizer

WORKERS = ["worker:0", "worker:1"]


# -- the shard's rules, in process ------------------------------------------------------------------------

def test_arrivals_count_once_and_a_look_arrives_nobody():
    state = ShardState(0, 2)
    assert state.arrive("L/done", "", 2) == ([], 2)
    assert state.arrive("L/done", "worker:1", 2) == (["worker:1"], 2)
    assert state.arrive("L/done", "worker:1", 2) == (["worker:1"], 2)  # re-arriving is harmless
    assert state.arrive("L/done", "worker:0", 2) == (["worker:0", "worker:1"], 2)
    assert state.arrive("other-launch/done", "", 2) == ([], 2)  # names are separate barriers


def test_barrier_errors():
    state = ShardState(0, 2)
    state.arrive("b", "worker:0", 2)
    with pytest.raises(PSAlreadyExists, match="expects 2 participants, this caller 3"):
        state.arrive("b", "worker:1", 3)
    with pytest.raises(ValueError, match="non-empty"):
        state.arrive("", "worker:0", 1)
    with pytest.raises(ValueError, match="expected must be >= 1"):
        state.arrive("c", "worker:0", 0)
    with pytest.raises(WrongShard, match="shard 0"):
        ShardState(1, 2).arrive("b", "worker:0", 2)


def test_claims_stop_at_the_limit():
    state = ShardState(0, 1)
    assert [state.increment_global_step(1, limit=3) for _ in range(5)] == [
        (1, True), (2, True), (3, True), (3, False), (3, False)]
    assert state.increment_global_step(2) == (5, True)  # without a limit, as before


def test_a_step_past_the_int64_range_is_refused_and_changes_nothing():
    """Found by `make fuzz`: an accepted increment left a step the GlobalStep reply could not encode."""
    state = ShardState(0, 1)
    top = 2**63 - 1
    assert state.increment_global_step(top - 5) == (top - 5, True)
    with pytest.raises(ValueError, match="int64 range"):
        state.increment_global_step(6)
    assert state.global_step == top - 5
    assert state.increment_global_step(5) == (top, True)


def test_barriers_are_never_checkpointed(tmp_path):
    state = ShardState(0, 1)
    state.create_dense("w", [2], {"type": "sgd"}, np.ones(2, np.float32))
    state.arrive("L/chief-ready", "worker:0", 1)
    path, _ = state.save(str(tmp_path / "ckpt-1"), 1)
    assert not any(b"chief-ready" in p.read_bytes() for p in path.rglob("*") if p.is_file())
    restored = ShardState(0, 1)
    restored.restore_own_part(path)
    assert sorted(restored.dense) == ["w"]
    assert restored.arrive("L/chief-ready", "", 1) == ([], 1)


# -- over gRPC, against real shard processes ---------------------------------------------------------------

@pytest.fixture
def two_shards(processes):
    shards = [wait_ready(processes, p) for p in [start_shard(processes, i, 2) for i in range(2)]]
    clients = [PSClient([s.address for s in shards], timeout_s=20) for _ in range(2)]
    yield shards, clients
    for c in clients:
        c.close()


@pytest.mark.slow
def test_wait_barrier_returns_when_all_arrive_and_names_the_missing_after_its_timeout(two_shards):
    shards, (a, b) = two_shards
    t0 = time.monotonic()
    with pytest.raises(BarrierTimeout, match=r"barrier 'L1/done': 1 of 2 arrived within 0.5s; missing: worker:1"):
        a.wait_barrier("L1/done", "worker:0", WORKERS, timeout_s=0.5)
    assert time.monotonic() - t0 < 5
    done = []
    waiter = threading.Thread(target=lambda: done.append(a.wait_barrier("L2/done", "worker:0", WORKERS, 30)))
    waiter.start()
    time.sleep(0.5)
    assert not done
    b.wait_barrier("L2/done", "worker:1", WORKERS, 30)
    waiter.join(10)
    assert done == [WORKERS]
    # an earlier launch's arrivals do not count for a new launch
    with pytest.raises(BarrierTimeout, match="missing: worker:1"):
        a.wait_barrier("L3/done", "worker:0", WORKERS, timeout_s=0.5)
    # only shard 0 holds barriers
    request = ps_pb2.BarrierRequest(name="x", participant="worker:0", expected=1).SerializeToString()
    with grpc.insecure_channel(shards[1].address) as channel, pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/monolith.ps.ParameterServer/Barrier")(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.slow
def test_concurrent_claims_end_exactly_at_the_limit(two_shards):
    _, clients = two_shards
    granted = []

    def claim(client):
        while True:
            step, ok = client.claim_global_step(150)
            if not ok:
                return
            granted.append(step)

    threads = [threading.Thread(target=claim, args=(c,)) for c in clients for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(granted) == list(range(1, 151)) and clients[0].global_step() == 150


@pytest.mark.slow
def test_a_waiting_participant_re_arrives_at_a_restarted_shard_0(processes):
    from services.ports import free_port

    port = free_port()
    shard = wait_ready(processes, start_shard(processes, 0, 1, port=port))
    a = PSClient([shard.address], timeout_s=10, retries=12, max_backoff_s=2)
    b = PSClient([shard.address], timeout_s=10, retries=12, max_backoff_s=2)
    try:
        done = []
        waiter = threading.Thread(target=lambda: done.append(a.wait_barrier("L/done", "worker:0", WORKERS, 120)))
        waiter.start()
        time.sleep(0.5)
        processes.stop(shard.proc)  # shard 0's barriers live in its memory: gone with it
        wait_ready(processes, start_shard(processes, 0, 1, port=port))
        b.wait_barrier("L/done", "worker:1", WORKERS, 60)
        waiter.join(60)
        assert done == [WORKERS]
    finally:
        a.close()
        b.close()


# -- the estimator: the chief's ready signal, and a worker that never comes -----------------------------

@pytest.mark.slow
def test_the_chief_stops_waiting_for_a_missing_worker_saves_and_names_it(two_shards, tmp_path):
    shards, (client, _) = two_shards
    config = RunConfig(model_dir=str(tmp_path), ps_addresses=[s.address for s in shards], num_workers=2,
                       worker_index=0, launch_id="launch-a", barrier_timeout_s=2.0)
    est = Estimator(TinyDNN(SgdOptimizer(0.3)), config)
    try:
        with pytest.raises(BarrierTimeout, match=r"barrier 'launch-a/train-done/5': 1 of 2 .* missing: worker:1"):
            est.train(5)
        assert est.last_checkpoint and est.last_checkpoint.endswith("ckpt-5")  # what was trained is kept
        # the chief's "ready" signal is a barrier, not a dense variable (which used to end up in checkpoints)
        assert client.barrier("launch-a/chief-ready", None, 1) == ["worker:0"]
        dense = [d for shard in client.stats()["shards"] for d in shard["dense"]]
        assert dense and all(name.startswith("dense_") for name in dense), dense
        manifest = ckpt.read_meta(tmp_path / "ckpt-5", "manifest")
        assert manifest["global_step"] == 5
        assert all(name.startswith("dense_") for name in manifest["dense"]), manifest["dense"]
    finally:
        est.close()
