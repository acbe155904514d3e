"""Checkpoints: bit-identical resume, refusal of corrupt/truncated files, crash safety, shard-filtered
save and re-sharding restore."""
import os
from pathlib import Path

import numpy as np
import pytest

from ps.persist import atomic_files, table_io
from ps.persist.atomic_files import CorruptCheckpointError
from ps.store.table import EmbeddingTable

CFG = {
    "segments": [
        {"dim": 1, "optimizer": {"type": "ftrl", "learning_rate": 0.05, "l1_regularization_strength": 0.01}},
        {"dim": 4, "optimizer": {"type": "adam", "learning_rate": 0.01}},
        {"dim": 3, "optimizer": {"type": "amsgrad", "learning_rate": 0.02, "weight_decay_factor": 0.01}},
    ],
    "initializer": {"type": "random_uniform", "seed": 7},
    "occurrence_threshold": 2,
    "expire_time_days": 5,
    "filter_capacity": 4096,
}


def _batches(n_steps, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(-2000, 2000, 3000), rng.normal(size=(3000, 8)).astype(np.float32), step * 3600)
            for step in range(n_steps)]


def _train(t, batches, first_step=0):
    for k, (ids, g, ts) in enumerate(batches):
        t.apply_gradients(ids, g, global_step=first_step + k, update_time=ts, learning_rates=[0.05, 0.01, 0.02])


def _state(t, ids):
    return {name: arr[t._probe(ids)] for name, arr in t._store.arrays().items() if name != "ids"}


def test_save_load_resumes_bit_identically(tmp_path):
    batches = _batches(8)
    straight = EmbeddingTable.from_dict(CFG)
    _train(straight, batches)
    first = EmbeddingTable.from_dict(CFG)
    _train(first, batches[:4])
    assert first.save(tmp_path / "ckpt") == first.size
    resumed = EmbeddingTable.load(tmp_path / "ckpt")
    assert resumed.config == first.config and resumed.max_update_time == first.max_update_time
    _train(resumed, batches[4:], first_step=4)
    ids = np.arange(-2000, 2000)
    assert resumed.size == straight.size
    np.testing.assert_array_equal(resumed.lookup(ids), straight.lookup(ids))
    present = ids[straight.contains(ids)]
    for name, arr in _state(straight, present).items():
        np.testing.assert_array_equal(_state(resumed, present)[name], arr, err_msg=name)


def test_adam_state_survives_restore(tmp_path):
    """Monolith's restore writes β2^t over β1^t; ours keeps both, so step 2 after a restore is unchanged."""
    cfg = {"dim": 2, "optimizer": {"type": "adam", "beta1": 0.5, "beta2": 0.9}}
    a = EmbeddingTable.from_dict(cfg)
    a.apply_gradients([1], [[10.0, 1.0]])
    a.save(tmp_path / "a")
    b = EmbeddingTable.load(tmp_path / "a")
    np.testing.assert_allclose(b._store.row_states[0][:1], [[0.5 ** 2, 0.9 ** 2]], rtol=1e-7)
    for t in (a, b):
        t.apply_gradients([1], [[10.0, 1.0]])
    np.testing.assert_array_equal(a.lookup([1]), b.lookup([1]))


def _saved(tmp_path, name="ckpt"):
    t = EmbeddingTable.from_dict(CFG)
    _train(t, _batches(3))
    path = tmp_path / name
    t.save(path)
    return t, path


def _rows_file(path):
    return sorted(Path(path).glob("rows-*.bin"))[0]


@pytest.mark.parametrize("damage", ["flip", "truncate", "drop-manifest", "edit-manifest", "drop-rows", "extend"])
def test_corrupt_or_truncated_checkpoint_is_refused(tmp_path, damage):
    t, path = _saved(tmp_path)
    rows = _rows_file(path)
    if damage == "flip":
        data = bytearray(rows.read_bytes())
        data[len(data) // 2] ^= 0x10
        rows.write_bytes(bytes(data))
    elif damage == "truncate":
        os.truncate(rows, rows.stat().st_size - 7)
    elif damage == "drop-manifest":
        (path / atomic_files.MANIFEST_NAME).unlink()
    elif damage == "edit-manifest":
        m = path / atomic_files.MANIFEST_NAME
        m.write_text(m.read_text().replace('"max_update_time": 7200', '"max_update_time": 9999'))
    elif damage == "drop-rows":
        rows.unlink()
    elif damage == "extend":
        with open(rows, "ab") as f:
            f.write(b"\0" * 8)
    with pytest.raises(CorruptCheckpointError):
        EmbeddingTable.load(path)
    target = EmbeddingTable.from_dict(CFG)
    target.assign([1], np.ones((1, 8)))
    target.assign([1], np.ones((1, 8)))
    target.assign([1], np.ones((1, 8)))
    with pytest.raises(CorruptCheckpointError):
        target.restore(path)
    assert target.size == 1


def test_crash_mid_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    t, path = _saved(tmp_path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    t.assign([12345], np.ones((1, 8)) * 3)
    t.assign([12345], np.ones((1, 8)) * 3)
    t.assign([12345], np.ones((1, 8)) * 3)
    real = table_io.write_file_synced
    calls = []

    def dying(p, chunks):
        calls.append(p)
        if len(calls) == 2:
            raise OSError("disk full (simulated crash)")
        return real(p, chunks)

    monkeypatch.setattr(table_io, "write_file_synced", dying)
    with pytest.raises(OSError):
        t.save(path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert EmbeddingTable.load(path).lookup([12345]).tolist() == [[0.0] * 8]
    monkeypatch.setattr(table_io, "write_file_synced", real)
    t.save(path)
    assert EmbeddingTable.load(path).lookup([12345]).tolist() == [[3.0] * 8]


def test_restore_refuses_a_different_config(tmp_path):
    _, path = _saved(tmp_path)
    other = EmbeddingTable.from_dict({**CFG, "occurrence_threshold": 3})
    with pytest.raises(ValueError, match="occurrence_threshold"):
        other.restore(path)
    bigger = EmbeddingTable.from_dict({**CFG, "initial_capacity": 100_000})
    assert bigger.restore(path) > 0


def test_shard_filtered_save_and_resharding_restore(tmp_path):
    """3 old shards saved with shard=(k, 3); each of 2 new shards restores every old directory keeping
    floormod(id, 2) == j (negative ids included). Pending admission counts carry over too."""
    cfg = {**CFG, "occurrence_threshold": 1}
    src = EmbeddingTable.from_dict(cfg)
    ids = np.arange(-300, 300, dtype=np.int64)
    src.apply_gradients(ids, np.ones((600, 8)), update_time=100)
    src.apply_gradients(ids[::2], np.ones((300, 8)), update_time=100)
    pending = ids[1::2]
    assert src.size == 300
    old_dirs = []
    for k in range(3):
        d = tmp_path / f"old{k}"
        n = src.save(d, shard=(k, 3))
        payload, arrays, _ = table_io.load_arrays(d)
        assert n == len(arrays["ids"]) and (np.mod(arrays["ids"], 3) == k).all() and payload["shard"] == [k, 3]
        old_dirs.append(d)
    new = [EmbeddingTable.from_dict(cfg) for _ in range(2)]
    for j, t in enumerate(new):
        for d in old_dirs:
            t.restore(d, shard=(j, 2))
        mine = ids[::2][np.mod(ids[::2], 2) == j]
        assert t.size == len(mine)
        np.testing.assert_array_equal(t.lookup(mine), src.lookup(mine))
        assert not t.contains(ids[np.mod(ids, 2) != j]).any()
        assert t.max_update_time == 100
    for j, t in enumerate(new):
        mine = pending[np.mod(pending, 2) == j]
        t.apply_gradients(mine, np.ones((len(mine), 8)), update_time=100)
        assert t.contains(mine).all()


def test_save_while_training_keeps_every_row_whole_and_memory_to_one_chunk(tmp_path, monkeypatch):
    """Training continues between chunk files; each saved row comes from one instant (its values all equal
    its update time, as the writer stamps them), and chunks are read one at a time."""
    import threading
    import time

    monkeypatch.setattr(table_io, "_CHUNK_BYTES", 64 * 1024)  # ~1k rows per chunk file
    t = EmbeddingTable.from_dict({"dim": 8, "optimizer": {"type": "sgd", "learning_rate": 0.1}})
    ids = np.arange(20_000, dtype=np.int64)
    t.assign(ids, np.zeros((ids.size, 8), np.float32))
    largest = []
    real_save_rows = table_io.save_rows

    def spying_save_rows(directory, layout, n, read_rows, sketch, final_meta):
        def read(lo, hi):
            got = read_rows(lo, hi)
            largest.append(max(a.shape[0] for a in got.values()))
            return got
        return real_save_rows(directory, layout, n, read, sketch, final_meta)

    monkeypatch.setattr("ps.store.table.save_rows", spying_save_rows)
    stop = threading.Event()

    def writer():
        c = 1
        while not stop.is_set():
            t.assign(ids, np.full((ids.size, 8), c, np.float32), update_time=c)
            c += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while t.max_update_time < 3:  # the writer is running
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.001)
        assert t.save(tmp_path / "t") == ids.size
    finally:
        stop.set()
        thread.join()
    _payload, arrays, _ = table_io.load_arrays(tmp_path / "t")
    np.testing.assert_array_equal(arrays["values"], np.repeat(arrays["update_time"][:, None], 8, axis=1))
    row_bytes = 8 * 4 + 8 + 8  # values, id, update time
    assert len(largest) == -(-ids.size // (64 * 1024 // row_bytes)) and max(largest) * row_bytes <= 64 * 1024
    assert EmbeddingTable.load(tmp_path / "t").size == ids.size


def test_rows_renumbered_during_a_save_make_it_start_over_under_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(table_io, "_CHUNK_BYTES", 4 * 1024)
    t = EmbeddingTable.from_dict({"dim": 4, "optimizer": {"type": "sgd", "learning_rate": 0.1},
                                  "expire_time_days": 1})
    old, new = np.arange(0, 500, dtype=np.int64), np.arange(500, 1000, dtype=np.int64)
    t.assign(old, np.ones((500, 4), np.float32), update_time=0)
    t.assign(new, np.full((500, 4), 2.0, np.float32), update_time=86_400)
    real_save_rows = table_io.save_rows
    evicted = []

    def evicting_save_rows(directory, layout, n, read_rows, sketch, final_meta):
        def read(lo, hi):
            if not evicted:
                evicted.append(t.evict_expired())  # compacts rows between two chunks of the first attempt
            return read_rows(lo, hi)
        return real_save_rows(directory, layout, n, read, sketch, final_meta)

    monkeypatch.setattr("ps.store.table.save_rows", evicting_save_rows)
    assert t.save(tmp_path / "t") == 500 and evicted == [500]
    back = EmbeddingTable.load(tmp_path / "t")
    np.testing.assert_array_equal(back.contains(old), False)
    np.testing.assert_array_equal(back.lookup(new), np.full((500, 4), 2.0, np.float32))


def test_restore_reads_one_chunk_file_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(table_io, "_CHUNK_BYTES", 16 * 1024)
    t = EmbeddingTable.from_dict(CFG)
    _train(t, _batches(3))
    t.save(tmp_path / "t")
    seen = []
    real_chunks = table_io.SavedRows.chunks

    def spying_chunks(self):
        for chunk in real_chunks(self):
            seen.append(len(chunk["ids"]))
            yield chunk

    monkeypatch.setattr(table_io.SavedRows, "chunks", spying_chunks)
    back = EmbeddingTable.load(tmp_path / "t")
    assert len(seen) > 5 and sum(seen) == t.size == back.size
    ids = t._store.ids[:t.size]
    for name, arr in _state(back, ids).items():
        np.testing.assert_array_equal(arr, _state(t, ids)[name], err_msg=name)
    halves = [EmbeddingTable.from_dict(CFG) for _ in range(2)]
    assert sum(h.restore(tmp_path / "t", shard=(k, 2)) for k, h in enumerate(halves)) == t.size
    np.testing.assert_array_equal(halves[1].contains(ids), np.mod(ids, 2) == 1)
