"""In-process pieces of the PS service: config codec, client routing kernels, ownership, checkpoint layout."""
import json

import numpy as np
import pytest

from ps.client.routing import route, sum_duplicates
from ps.config import TableConfig
from ps.persist import checkpoint as ckpt
from ps.sharding import dense_owner, id_owner
from ps.wire.config_codec import table_config_from_proto, table_config_to_proto
from ps.wire.tensors import ids_from_bytes, rows_from_bytes

SGD = {"type": "sgd", "learning_rate": 0.1}
CONFIGS = [
    {"dim": 8, "initializer": {"type": "zeros"},
     "optimizer": {"type": "adagrad", "learning_rate": 0.1, "initial_accumulator_value": 0.1}},
    {"segments": [
        {"dim": 1, "initializer": {"type": "constant", "value": 0.5}, "optimizer": {"type": "sgd", "learning_rate": 1}},
        {"dim": 7, "initializer": {"type": "random_uniform", "minval": -0.1, "maxval": 0.1, "seed": 7},
         "optimizer": {"type": "momentum", "learning_rate": 0.01, "momentum": 0.9, "use_nesterov": True}},
    ], "occurrence_threshold": 20, "expire_time_days": 7, "filter_capacity": 1 << 20, "initial_capacity": 64},
    {"dim": 4, "optimizer": {"type": "ftrl"}, "expire_time_days": 3},
]


@pytest.mark.parametrize("config", CONFIGS)
def test_table_config_round_trips_exactly_with_types(config):
    """User dict in, one validated TableConfig, the proto on the wire, the same TableConfig out."""
    table = TableConfig.from_dict(config)
    msg = table_config_to_proto("t", table)
    back = table_config_from_proto(type(msg).FromString(msg.SerializeToString()))
    assert back == table
    assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps(table.to_dict(), sort_keys=True)  # ints stay ints


@pytest.mark.parametrize("config, field", [
    ({"dim": "8", "optimizer": SGD}, "dim"), ({"dim": 8, "optimizer": "sgd"}, "optimizer"),
    ({"segments": []}, "segments"), ({"dim": 8, "optimizer": SGD, "occurrence_threshold": 1.5}, "occurrence_threshold"),
    ({"dim": 8, "optimizer": SGD, "x": object()}, "x"), ({"dim": 8}, "optimizer"),
    ({"segments": [{"dim": 2, "optimizer": {"learning_rate": 1}}]}, "optimizer"),
])
def test_bad_config_names_the_field(config, field):
    with pytest.raises((ValueError, TypeError), match=field):
        TableConfig.from_dict(config)


def test_a_shard_rebuilding_a_config_from_the_wire_checks_it_again():
    msg = table_config_to_proto("t", TableConfig.from_dict(CONFIGS[0]))
    msg.segments[0].optimizer.params.floats["learning_rate"] = -1.0
    with pytest.raises(ValueError, match="learning_rate"):
        table_config_from_proto(msg)


def test_floormod_routing_of_negative_ids_matches_monolith():
    # docs/monolith-reference.md: v1 fid of slot 600, int64 -7638104968020348871 -> floormod 3 = 2
    assert id_owner(np.array([-7638104968020348871]), 3)[0] == 2
    assert list(id_owner(np.array([-1, -3, 0, 4]), 3)) == [2, 0, 0, 1]


def test_route_dedupes_partitions_and_reexpands():
    rng = np.random.default_rng(1)
    ids = rng.integers(-50, 50, size=2000).astype(np.int64)
    for n in (1, 2, 3, 7):
        r = route(ids, n)
        assert sorted(r.unique.tolist()) == sorted(set(ids.tolist()))
        for s in range(n):
            assert (np.mod(r.shard_ids(s), n) == s).all()
        assert sum(r.shard_ids(s).size for s in range(n)) == r.unique.size
        parts = [(s, r.shard_ids(s).astype(np.float32)[:, None] * np.ones((1, 3), np.float32)) for s in range(n)]
        out = r.assemble([p for p in parts if p[1].size], 3)
        assert out.dtype == np.float32 and out.flags.writeable
        np.testing.assert_array_equal(out, ids.astype(np.float32)[:, None] * np.ones((1, 3)))
    grads = rng.normal(size=(ids.size, 3)).astype(np.float32)
    r = route(ids, 3)
    summed = sum_duplicates(r, grads)
    for k, u in enumerate(r.unique):
        np.testing.assert_allclose(summed[k], grads[ids == u].sum(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("num_shards", [1, 3])
@pytest.mark.parametrize("with_duplicates", [True, False])
def test_assemble_reads_unaligned_read_only_reply_views(dtype, num_shards, with_duplicates):
    """Replies are decoded as views into the received bytes: read-only and, after the protobuf header,
    not aligned. Re-expansion reads them in place and returns a new writable float32 array."""
    rng = np.random.default_rng(2)
    ids = rng.integers(-40, 40, size=500) if with_duplicates else rng.permutation(500) - 250
    ids = ids.astype(np.int64)
    r = route(ids, num_shards)
    parts = []
    for s in range(num_shards):
        rows = (r.shard_ids(s).astype(np.float32)[:, None] * np.array([1, -2, 0.5], np.float32)).astype(dtype)
        view = np.frombuffer(b"\x01" + rows.tobytes(), dtype=dtype, offset=1).reshape(rows.shape)
        assert not view.flags.writeable and not view.flags.aligned
        parts.append((s, view))
    out = r.assemble(parts, 3)
    assert out.dtype == np.float32 and out.flags.writeable and out.flags.c_contiguous
    expected = (ids.astype(np.float32)[:, None] * np.array([1, -2, 0.5], np.float32)).astype(dtype)
    np.testing.assert_array_equal(out, expected.astype(np.float32))


def test_route_without_duplicates_keeps_the_input():
    ids = np.array([5, -2, 9], np.int64)
    r = route(ids, 1)
    assert r.inverse is None and r.unique is ids


def test_dense_owner_is_stable_md5():
    # fixed expectations: md5 is the same in every process and Python version
    assert [dense_owner(n, 3) for n in ("dense/w", "dense/b", "tower/kernel")] == \
        [dense_owner(n, 3) for n in ("dense/w", "dense/b", "tower/kernel")]
    import hashlib
    assert dense_owner("x", 5) == int.from_bytes(hashlib.md5(b"x").digest()[:8], "little") % 5


def test_wire_decoding_rejects_truncation():
    with pytest.raises(ValueError, match="not a multiple of 8"):
        ids_from_bytes(b"\x01" * 13, "Lookup table 'user'")
    with pytest.raises(ValueError, match="expected 2 ids x dim 4"):
        rows_from_bytes(b"\x00" * 30, 2, 4, "Assign table 'user'")


def test_latest_checkpoint_needs_a_manifest_and_prune_keeps_k(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None
    for step in (1, 2, 3, 4):
        path = ckpt.checkpoint_path(tmp_path, step)
        path.mkdir()
        if step != 4:  # step 4 is a crashed save: no manifest
            ckpt.write_meta(path, {"step": step})
    assert ckpt.latest_checkpoint(tmp_path).name == "ckpt-3"
    (ckpt.checkpoint_path(tmp_path, 3) / ckpt.MANIFEST).write_text("{truncated")
    assert ckpt.latest_checkpoint(tmp_path).name == "ckpt-2"
    with pytest.raises(ckpt.CheckpointError, match="incomplete or missing"):
        ckpt.resolve(tmp_path, 4)
    removed = ckpt.prune(tmp_path, keep=1)
    assert [p.name for p in removed] == ["ckpt-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-2", "ckpt-3", "ckpt-4"]
    assert not list(tmp_path.glob(".*tmp*"))


def test_manifest_refuses_a_missing_shard(tmp_path):
    path = ckpt.checkpoint_path(tmp_path, 5)
    (path / ckpt.shard_dir_name(0, 2)).mkdir(parents=True)
    ckpt.write_meta(path / ckpt.shard_dir_name(0, 2), {
        "step": 5, "shard_index": 0, "num_shards": 2, "global_step": 0, "tables": {}, "dense": {}})
    with pytest.raises(ckpt.CheckpointError, match="shard 1 of .*does not exist"):
        ckpt.write_manifest(path, 5, 2)
    assert not (path / ckpt.MANIFEST).exists()


def test_passive_kernel_threads_applies_only_before_numba_starts_its_pool():
    import os
    import subprocess
    import sys

    script = (
        "import os, numpy as np\n"
        "from ps.kernels.threads import passive_kernel_threads\n"
        "first = passive_kernel_threads(); value = os.environ.get('OMP_WAIT_POLICY')\n"
        "del os.environ['OMP_WAIT_POLICY']\n"
        "from ps.kernels.hash_index import probe\n"
        "probe(np.zeros(16, np.uint64), np.zeros(0, np.int64), np.zeros(1, np.int64), np.empty(1, np.int64))\n"
        "print(first, value, passive_kernel_threads(), 'OMP_WAIT_POLICY' in os.environ)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "PASSIVE", "False", "False"]
