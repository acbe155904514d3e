"""The prefetcher's staleness bound and the prediction file format."""
import threading
import time

import numpy as np
import pytest

from worker.runtime.batch_prefetch import Prefetcher
from worker.runtime.prediction_writer import PredictionWriter


@pytest.mark.parametrize("staleness", [0, 1, 3])
def test_lookup_never_runs_more_than_staleness_steps_ahead_of_pushes(staleness):
    pushed = 0
    lock = threading.Lock()
    seen_gap = []
    source = iter(range(30))

    def lookup(i):
        with lock:
            seen_gap.append(i - pushed)  # steps whose gradients are not pushed yet when i is looked up
        time.sleep(0.001)
        return i

    pf = Prefetcher(lambda: next(source), lookup, staleness)
    got = []
    while (item := pf.get()) is not None:
        got.append(item)
        time.sleep(0.002)  # the step's compute
        with lock:
            pushed += 1
        pf.done()
    pf.close()
    assert got == list(range(30))
    assert max(seen_gap) <= staleness
    if staleness:
        assert max(seen_gap) == staleness  # and the overlap is actually used


def test_a_lookup_on_get_runs_on_the_consumers_thread_after_every_earlier_push_while_reads_run_ahead():
    """Local mode: the in-process lookup runs in `get`, so it always sees every earlier step's push."""
    source, reads, lookups = iter(range(6)), [], []

    def read():
        reads.append(threading.current_thread())
        return next(source)

    pf = Prefetcher(read, lambda i: (lookups.append(threading.current_thread()), i)[1], 0, lookup_on_get=True)
    assert pf.get() == 0
    deadline = time.monotonic() + 5
    while len(reads) < 3 and time.monotonic() < deadline:  # reading runs ahead with no push done
        time.sleep(0.001)
    got = [0, *iter(pf.get, None)]
    pf.close()
    assert got == list(range(6)) and len(reads) >= 3
    assert set(lookups) == {threading.current_thread()} and threading.current_thread() not in reads


def test_prefetch_errors_reach_the_consumer():
    def read():
        raise OSError("disk gone")

    pf = Prefetcher(read, lambda x: x, 0)
    with pytest.raises(OSError, match="disk gone"):
        pf.get()
    pf.close()
    with pytest.raises(ValueError, match="staleness"):
        Prefetcher(read, lambda x: x, -1)


def test_prediction_writer_fields_then_heads_sorted(tmp_path):
    with pytest.raises(ValueError, match="output_fields"):
        PredictionWriter(str(tmp_path), 3, None)
    w = PredictionWriter(str(tmp_path), 3, "uid,label", delimiter="|")
    w.write({"uid": np.array([[7], [8]]), "label": np.array([1.0, 0.0]), "x": np.zeros(2)},
            {"zeta": np.array([0.25, 0.5]), "alpha": np.array([[1.5], [2.5]])})
    with pytest.raises(ValueError, match="nope"):
        PredictionWriter(str(tmp_path / "b"), 0, "nope").write({"uid": np.zeros(1)}, np.zeros(1))
    w.close()
    assert (tmp_path / "part-00003").read_text().splitlines() == ["7|1.0|1.5|0.25", "8|0.0|2.5|0.5"]
