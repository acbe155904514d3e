"""Coordinated checkpoints across real shard processes: re-sharding 2→3→1, retention, crash safety,
partial recovery of one restarted shard, and a shard killed mid-training."""
import os
import signal
import threading
import time

import grpc
import numpy as np
import pytest

from protos import ps_pb2
from ps.client import PSClient
from ps.errors import PSError, PSUnavailable
from ps.persist import checkpoint as ckpt
from tests.ps_cluster import start_cluster, start_shard, wait_ready

pytestmark = pytest.mark.slow

TABLES = {
    "user": {"segments": [
        {"dim": 2, "initializer": {"type": "constant", "value": 0.1},
         "optimizer": {"type": "sgd", "learning_rate": 0.2}},
        {"dim": 6, "initializer": {"type": "zeros"},
         "optimizer": {"type": "adagrad", "learning_rate": 0.1, "initial_accumulator_value": 0.1}},
    ]},
    "item": {"dim": 4, "initializer": {"type": "ones"},
             "optimizer": {"type": "adagrad", "learning_rate": 0.05, "initial_accumulator_value": 0.1}},
}
DENSE = {"w": {"shape": [5, 3], "optimizer": {"type": "adagrad", "learning_rate": 0.1,
                                              "initial_accumulator_value": 0.1}},
         "b": {"shape": [3], "optimizer": {"type": "sgd", "learning_rate": 0.1}},
         "emb/proj": {"shape": [2, 2], "optimizer": {"type": "sgd", "learning_rate": 0.3}}}
PROBE = np.arange(-300, 300, dtype=np.int64)


def train(client, steps, seed):
    rng = np.random.default_rng(seed)
    for step in range(steps):
        batch = {}
        for name in TABLES:
            ids = rng.integers(-300, 300, size=400)
            batch[name] = (ids, rng.normal(size=(ids.size, client.table_meta(name).dim)).astype(np.float32))
        client.apply_gradients_many(batch, global_step=step)
        client.dense_push({n: rng.normal(size=spec["shape"]).astype(np.float32) for n, spec in DENSE.items()})
        client.increment_global_step()


def state_of(client):
    return {**{t: client.lookup(t, PROBE) for t in TABLES},
            **{f"dense:{k}": v for k, v in client.dense_pull().items()}, "step": client.global_step()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def owned_counts(client, num_shards):
    stats = client.stats()["shards"]
    return [s["tables"]["item"]["rows"] for s in stats], [
        int(np.sum(np.mod(PROBE[np.any(client.lookup("item", PROBE) != 0, axis=1)], num_shards) == k))
        for k in range(num_shards)]


def test_checkpoint_restores_onto_3_then_1_shards(processes, tmp_path):
    two, three, one = (start_cluster(processes, n) for n in (2, 3, 1))
    c2, c3, c1 = (PSClient([s.address for s in cl], keep_checkpoints=2, timeout_s=60) for cl in (two, three, one))
    for c in (c2, c3, c1):
        c.wait_until_ready(60)
    c2.create_tables(TABLES)
    c2.create_dense({n: {**s, "initial_value": np.full(s["shape"], 0.5, np.float32)} for n, s in DENSE.items()})
    train(c2, 4, seed=1)
    d = tmp_path / "ckpt"
    path = c2.save(str(d), 100)
    assert sorted(os.listdir(path)) == [ckpt.MANIFEST, "shard-0-of-2", "shard-1-of-2"]
    expected = state_of(c2)
    assert expected["step"] == 4

    assert c3.restore(str(d)) == path
    assert_same_state(state_of(c3), expected)
    got, want = owned_counts(c3, 3)
    assert got == want and sum(got) == c2.stats()["tables"]["item"]["rows"]

    # optimizer state survived: identical further training on both clusters stays identical
    train(c2, 2, seed=2)
    train(c3, 2, seed=2)
    after2, after3 = state_of(c2), state_of(c3)
    for key in after2:
        np.testing.assert_allclose(after3[key], after2[key], rtol=1e-6, atol=1e-7, err_msg=key)

    d3 = tmp_path / "ckpt3"
    c3.save(str(d3), 200)
    c1.restore(str(d3), step=200)
    assert_same_state(state_of(c1), state_of(c3))

    # keep the last K=2 complete checkpoints; a save without its manifest is never picked up
    c2.save(str(d), 101)
    c2.save(str(d), 102)
    assert [p.name for _s, p in ckpt.complete_checkpoints(d)] == ["ckpt-101", "ckpt-102"]
    crashed = ckpt.checkpoint_path(d, 999)
    with grpc.insecure_channel(two[0].address) as ch:  # shard 0 saved, then the coordinator "crashed"
        ch.unary_unary("/monolith.ps.ParameterServer/Save")(
            ps_pb2.SaveRequest(checkpoint_path=str(crashed), step=999).SerializeToString(), timeout=30)
    assert (crashed / "shard-0-of-2" / ckpt.MANIFEST).exists()
    assert c2.latest_checkpoint(str(d)) == str(ckpt.checkpoint_path(d, 102))
    with pytest.raises(ValueError, match="incomplete"):
        c2.restore(str(d), step=999)

    # a corrupt checkpoint is refused with a clear error and the shards keep their state
    before = state_of(c1)
    shard_dir = d3 / "ckpt-200" / "shard-0-of-3"
    victim = max((p for p in shard_dir.rglob("*") if p.is_file() and p.name != ckpt.MANIFEST),
                 key=lambda p: p.stat().st_size)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(PSError) as info:
        c1.restore(str(d3))
    assert info.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "ckpt-200" in str(info.value)
    assert_same_state(state_of(c1), before)
    # a shard told to restore it at start-up refuses to start (exit 1) and names the damaged file
    refused = start_shard(processes, 0, 1, checkpoint_dir=str(d3))
    assert refused.wait(60) == 1
    assert f"cannot restore {d3 / 'ckpt-200'}" in processes.log_of(refused) and victim.name in processes.log_of(refused)
    for c in (c2, c3, c1):
        c.close()


def test_restarted_shard_reloads_its_part_while_others_keep_newer_state(processes, tmp_path):
    d = str(tmp_path / "ckpt")
    shards = start_cluster(processes, 2, checkpoint_dir=d)
    addresses = [s.address for s in shards]
    client = PSClient(addresses, retries=8, backoff_s=0.2, timeout_s=60)
    client.wait_until_ready(60)
    client.create_tables(TABLES)
    client.create_dense({n: {**s, "initial_value": np.zeros(s["shape"], np.float32)} for n, s in DENSE.items()})
    train(client, 3, seed=5)
    client.save(d, 3)
    saved = state_of(client)
    train(client, 3, seed=6)
    newer = state_of(client)

    os.killpg(shards[1].proc.pid, signal.SIGKILL)
    shards[1].proc.wait(10)
    impatient = PSClient(addresses, retries=1, backoff_s=0.05, timeout_s=5)
    down = impatient.health()
    assert down[0]["serving"] and not down[1]["serving"] and "UNAVAILABLE" in down[1]["error"]
    with pytest.raises(PSUnavailable, match=rf"PS shard 1 \({addresses[1]}\) Lookup failed after 2 attempts"):
        impatient.lookup("item", PROBE)
    impatient.close()

    result, errors = {}, []

    def training_continues():
        try:
            start = time.monotonic()
            result["rows"] = client.lookup_many({t: PROBE for t in TABLES})  # waits out the restart
            result["elapsed"] = time.monotonic() - start
            train(client, 2, seed=7)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    worker = threading.Thread(target=training_continues)
    worker.start()
    time.sleep(0.5)
    restarted = wait_ready(processes, start_shard(processes, 1, 2, port=shards[1].port, checkpoint_dir=d))
    worker.join(60)
    assert not worker.is_alive() and not errors, errors
    assert result["elapsed"] < 20  # within the retry budget (0.2 s doubling, capped at 4 s, 8 retries)
    health = client.health()[1]
    assert health["pid"] == restarted.proc.pid and health["restored_from"].endswith("ckpt-3")

    odd = np.mod(PROBE, 2) == 1  # shard 1's ids came back from the checkpoint, shard 0's kept training
    for t in TABLES:
        np.testing.assert_array_equal(result["rows"][t][odd], saved[t][odd])
        np.testing.assert_array_equal(result["rows"][t][~odd], newer[t][~odd])
    client.close()


def test_sigterm_lets_an_in_flight_save_finish(processes, tmp_path):
    shard = wait_ready(processes, start_shard(processes, 0, 1, extra=["--grace-s", "60", "--metrics-port", "-1"]))
    client = PSClient([shard.address], timeout_s=120)
    client.create_tables({"big": {"dim": 64, "optimizer": {"type": "sgd", "learning_rate": 0.1}}})
    ids = np.arange(400_000, dtype=np.int64)
    for lo in range(0, ids.size, 100_000):
        client.assign("big", ids[lo:lo + 100_000], np.full((100_000, 64), 0.5, np.float32))
    d = tmp_path / "ckpt"
    result, errors = {}, []

    def save():
        try:
            result["path"] = client.save(str(d), 1)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    saver = threading.Thread(target=save)
    saver.start()
    ckpt_dir = ckpt.checkpoint_path(d, 1)
    deadline = time.monotonic() + 60
    while not list(ckpt_dir.glob(".shard-0-of-1.tmp-*")):  # the shard is inside the Save handler
        assert time.monotonic() < deadline and saver.is_alive(), "Save never started"
        time.sleep(0.005)
    os.killpg(shard.proc.pid, signal.SIGTERM)
    saver.join(120)
    assert not errors, errors
    assert shard.proc.wait(60) == 0
    assert client.latest_checkpoint(str(d)) == result["path"]
    log = processes.log_of(shard.proc)
    assert log.index("signal 15") < log.index("saved step 1") < log.index("stopped")
    client.close()


def test_save_on_exit_snapshot_resumes_a_restarted_shard_exactly(processes, tmp_path):
    """SIGTERM (a pod eviction, a rolling restart) loses nothing with --save-on-exit; a later complete
    checkpoint wins over an older exit snapshot; the flag without a directory is refused."""
    d = str(tmp_path / "ckpt")
    extra = ["--save-on-exit"]
    shards = start_cluster(processes, 2, checkpoint_dir=d, extra=extra)
    addresses = [s.address for s in shards]
    client = PSClient(addresses, retries=8, backoff_s=0.2, timeout_s=60)
    client.create_tables(TABLES)
    client.create_dense({n: {**s, "initial_value": np.zeros(s["shape"], np.float32)} for n, s in DENSE.items()})
    train(client, 2, seed=11)
    client.save(d, 2)
    train(client, 2, seed=12)  # state newer than every checkpoint
    before = state_of(client)
    for shard in shards:  # shard 0 holds the global step, shard 1 the odd ids
        assert processes.stop(shard.proc, signal.SIGTERM) == 0, processes.log_of(shard.proc)
        assert "exit snapshot saved to" in processes.log_of(shard.proc)
    assert sorted(os.listdir(os.path.join(d, "exit"))) == ["shard-0-of-2", "shard-1-of-2"]
    assert client.latest_checkpoint(d).endswith("ckpt-2")  # the snapshot is not a coordinated checkpoint

    shards = [wait_ready(processes, start_shard(processes, i, 2, port=s.port, checkpoint_dir=d, extra=extra))
              for i, s in enumerate(shards)]
    assert [h["restored_from"] for h in client.health()] == [
        str(ckpt.exit_snapshot_path(d, i, 2)) for i in range(2)]
    assert_same_state(state_of(client), before)

    train(client, 1, seed=13)
    client.save(d, 5)  # newer than the snapshot: a shard killed without a chance to save comes back from it
    saved = state_of(client)
    os.killpg(shards[1].proc.pid, signal.SIGKILL)
    shards[1].proc.wait(10)
    wait_ready(processes, start_shard(processes, 1, 2, port=shards[1].port, checkpoint_dir=d, extra=extra))
    assert client.health()[1]["restored_from"].endswith("ckpt-5")
    assert_same_state(state_of(client), saved)
    client.close()

    refused = start_shard(processes, 0, 1, extra=["--save-on-exit"])
    assert refused.wait(60) == 2
    assert "--save-on-exit needs --checkpoint-dir" in processes.log_of(refused)
