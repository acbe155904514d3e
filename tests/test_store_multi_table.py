"""Multi-type and merged tables: Monolith's multi_type_hash_table_test / multi_hash_table_ops_test values
(docs/monolith-reference.md), with SGD lr 1 and zeros initializers as in Monolith's test config."""
import hashlib

import numpy as np
import pytest

from ps.store.multi_table import MergedMultiTypeHashTable, MultiTypeHashTable, merged_table_name, restore_aliases


def _cfg(dim, lr=1.0):
    return {"dim": dim, "optimizer": {"type": "sgd", "learning_rate": lr}}


def _filled():
    t = MultiTypeHashTable({"slot0": _cfg(1), "not_used": _cfg(2), "slot1": _cfg(2), "slot2": _cfg(2)})
    t.assign_add({"slot0": [0], "slot1": [1], "slot2": [2, 3]},
                 {"slot0": [[1.0]], "slot1": [[2.0, 2.0]], "slot2": [[4.0, 4.0], [8.0, 8.0]]})
    return t


def test_assign_add_lookup_and_reinitialize():
    t = _filled()
    got = t.lookup({"slot0": [0], "slot1": [1], "slot2": [2, 3]})
    np.testing.assert_array_equal(got["slot0"], [[1]])
    np.testing.assert_array_equal(got["slot1"], [[2, 2]])
    np.testing.assert_array_equal(got["slot2"], [[4, 4], [8, 8]])
    np.testing.assert_array_equal(t.reinitialize("slot2", [1, 2, 3]), [0, 1, 1])
    np.testing.assert_array_equal(t.lookup({"slot2": [1, 2, 3]})["slot2"], np.zeros((3, 2)))
    np.testing.assert_array_equal(t.reinitialize("slot3", [1, 2, 3]), [-1, -1, -1])
    np.testing.assert_array_equal(t.lookup({"slot0": [0]})["slot0"], [[1]])
    with pytest.raises(KeyError, match="slot3"):
        t.lookup({"slot3": [1]})


def test_apply_gradients_with_and_without_lookup_and_learning_rates():
    t = MultiTypeHashTable({"slot0": _cfg(1), "slot1": _cfg(2)})
    t.apply_gradients({"slot0": [0], "slot1": [1, 2]}, {"slot0": [[2.0]], "slot1": [[1.0, 3.0], [2.0, 4.0]]})
    got = t.lookup({"slot0": [0], "slot1": [1, 2]})
    np.testing.assert_array_equal(got["slot0"], [[-2]])
    np.testing.assert_array_equal(got["slot1"], [[-1, -3], [-2, -4]])
    t = MultiTypeHashTable({"slot0": _cfg(1), "slot1": _cfg(2)})
    t.apply_gradients({"slot0": [0], "slot1": [1, 2]}, {"slot0": [[2.0]], "slot1": [[1.0, 3.0], [2.0, 4.0]]},
                      name_to_learning_rates={"slot0": [0.1], "slot1": [0.1]})
    got = t.lookup({"slot0": [0], "slot1": [1, 2]})
    np.testing.assert_allclose(got["slot0"], [[-0.2]], rtol=1e-6)
    np.testing.assert_allclose(got["slot1"], [[-0.1, -0.3], [-0.2, -0.4]], rtol=1e-6)
    t = MultiTypeHashTable({"slot0": _cfg(1), "slot1": _cfg(2)})
    t.apply_gradients({"slot0": [1], "slot1": [2, 2]}, {"slot0": [[3.0]], "slot1": [[1.1, 3.1], [2.2, 4.2]]})
    got = t.lookup({"slot0": [1], "slot1": [1, 2]})
    np.testing.assert_array_equal(got["slot0"], [[-3]])
    np.testing.assert_allclose(got["slot1"], [[0, 0], [-3.3, -7.3]], rtol=1e-6)


def test_save_restore_across_different_table_sets(tmp_path):
    t = _filled()
    t.save(tmp_path / "multi")
    other = MultiTypeHashTable({"slot0": _cfg(1), "slot2": _cfg(2), "slot3": _cfg(2)})
    other.assign_add({"slot0": [0]}, {"slot0": [[-5.0]]})
    used = other.restore(tmp_path / "multi")
    assert used == {"slot0": "slot0", "slot2": "slot2", "slot3": None}
    got = other.lookup({"slot0": [0], "slot2": [2, 3], "slot3": [1]})
    np.testing.assert_array_equal(got["slot0"], [[1]])
    np.testing.assert_array_equal(got["slot2"], [[4, 4], [8, 8]])
    np.testing.assert_array_equal(got["slot3"], [[0, 0]])


def test_merged_tables_share_an_id_space():
    t = MergedMultiTypeHashTable({"slot0": _cfg(1), "slot1": _cfg(2), "slot2": _cfg(2)})
    assert len(t.store.tables) == 2 and t.slot_to_merged["slot1"] == t.slot_to_merged["slot2"]
    assert t.slot_to_merged["slot1"] == merged_table_name(["slot1", "slot2"])
    t.assign_add({"slot0": [0], "slot1": [1], "slot2": [1]}, {"slot0": [[1.0]], "slot1": [[2.0, 2.0]],
                                                               "slot2": [[4.0, 4.0]]})
    got = t.lookup({"slot0": [0], "slot1": [1], "slot2": [1]})
    np.testing.assert_array_equal(got["slot0"], [[1]])
    np.testing.assert_array_equal(got["slot1"], [[6, 6]])
    np.testing.assert_array_equal(got["slot2"], [[6, 6]])
    t.apply_gradients({"slot0": [0], "slot1": [1], "slot2": [1]}, {"slot0": [[-1.0]], "slot1": [[1.0, 1.0]],
                                                                   "slot2": [[1.0, 1.0]]})
    got = t.lookup({"slot0": [0], "slot1": [1]})
    np.testing.assert_array_equal(got["slot0"], [[2]])
    np.testing.assert_array_equal(got["slot1"], [[4, 4]])


def test_merged_name_stability_and_restore_alias(tmp_path):
    seen = []

    def factory(cfg):
        seen.append(cfg)
        from ps.store.table import EmbeddingTable
        return EmbeddingTable.from_dict(cfg)

    spelled_out = {"dim": 2, "optimizer": {"type": "sgd", "learning_rate": 1.0, "weight_decay_factor": 0.0}}
    t = MergedMultiTypeHashTable({"slot0": _cfg(2), "slot1": spelled_out}, factory)
    assert list(t.store.tables) == ["e21904dd414d1780e5fc904866dc69c2"] and len(seen) == 1
    assert merged_table_name(["slot1", "slot0"]) == hashlib.md5(b"slot0,slot1").hexdigest()
    assert restore_aliases(["fc_slot_0"]) == ["cde3ba88ba62b682f84241b273f8100c"]
    assert restore_aliases(["slot_0"]) == []
    old = MergedMultiTypeHashTable({"slot_0": _cfg(1)})
    old.assign({"slot_0": [5]}, {"slot_0": [[3.0]]})
    old.save(tmp_path / "old")
    new = MergedMultiTypeHashTable({"fc_slot_0": _cfg(1)})
    assert new.restore(tmp_path / "old") == {merged_table_name(["fc_slot_0"]): "cde3ba88ba62b682f84241b273f8100c"}
    np.testing.assert_array_equal(new.lookup({"fc_slot_0": [5]})["fc_slot_0"], [[3]])
