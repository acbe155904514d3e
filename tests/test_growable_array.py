"""GrowableArray: growth keeps rows without copying them, memory is faulted in only when asked, and a view
someone still holds stays valid (the growth copies instead of moving the memory under it)."""
import numpy as np

from ps.store import growable_array
from ps.store.growable_array import GrowableArray
from ps.store.table import EmbeddingTable


def test_growth_keeps_rows_and_faults_in_nothing_by_itself():
    a = GrowableArray((4,), np.float32, 1000)
    assert a.capacity == 1000 and a.populated == 0 and a.populated_bytes == 0
    a.populate(1000)
    a.array[:] = np.arange(4000, dtype=np.float32).reshape(1000, 4)
    bytes_before, _ = growable_array.populate_stats()
    a.grow(1_000_000, keep_rows=1000)
    assert a.array.shape == (1_000_000, 4) and a.populated == 1000
    assert growable_array.populate_stats()[0] == bytes_before  # no row was copied into fresh memory
    np.testing.assert_array_equal(a.array[:1000], np.arange(4000, dtype=np.float32).reshape(1000, 4))
    a.populate(300_000)
    assert a.populated == 300_000 and growable_array.populate_stats()[0] >= bytes_before + 299_000 * 16
    assert not a.array[1000:300_000].any()


def test_a_view_held_across_growth_stays_valid_and_the_rows_are_copied():
    a = GrowableArray((), np.int64, 10)
    a.populate(10)
    a.array[:] = np.arange(10)
    held = a.array[:10]
    bytes_before, _ = growable_array.populate_stats()
    a.grow(5000, keep_rows=10)
    assert growable_array.populate_stats()[0] > bytes_before  # copied into a new mapping
    np.testing.assert_array_equal(held, np.arange(10))  # the old memory is still mapped for the view
    np.testing.assert_array_equal(a.array[:10], np.arange(10))
    a.array[:10] = -1
    assert held[0] == 0


def test_rows_without_columns():
    a = GrowableArray((0,), np.float64, 5)
    a.grow(50, keep_rows=5)
    a.populate(50)
    assert a.array.shape == (50, 0) and a.populated_bytes == 0


def test_a_table_grows_while_a_caller_holds_one_of_its_arrays():
    t = EmbeddingTable.from_dict({"dim": 2, "optimizer": {"type": "sgd"}})
    t.assign([1, 2], [[1.0, 1.0], [2.0, 2.0]])
    held = t._store.values[:2]
    ids = np.arange(10, 100_010, dtype=np.int64)
    t.assign(ids, np.ones((len(ids), 2), np.float32))
    np.testing.assert_array_equal(held, [[1, 1], [2, 2]])
    np.testing.assert_array_equal(t.lookup([1, 2, 50]), [[1, 1], [2, 2], [1, 1]])
