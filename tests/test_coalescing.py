"""`Coalescer`: how concurrent calls are grouped into batches, and how results and errors get back."""
import threading
import time

import pytest

from serving.coalescing import Coalescer


def _start(coalescer, payloads, got):
    def call(p):
        try:
            got[p] = coalescer.call(p)
        except Exception as exc:  # noqa: BLE001 - checked by the tests
            got[p] = exc

    threads = [threading.Thread(target=call, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    return threads


def test_calls_beyond_max_in_flight_queue_and_then_run_as_one_batch():
    gates, batches, running = {1: threading.Event(), 2: threading.Event()}, [], []

    def run_batch(payloads):
        batches.append(list(payloads))
        running.append(1)
        if payloads[0] in gates:
            gates[payloads[0]].wait(30)
        return [p * 10 for p in payloads]

    coalescer = Coalescer(run_batch, max_in_flight=2)
    got: dict = {}
    threads = _start(coalescer, [1, 2], got)
    while len(running) < 2:  # both run at once: two batches in flight
        time.sleep(0.005)
    threads += _start(coalescer, [3, 4, 5], got)
    while len(coalescer._queue) < 3:
        time.sleep(0.005)
    gates[1].set()  # the first batch ends while the second still runs: everything queued goes out together
    while len(batches) < 3:
        time.sleep(0.005)
    gates[2].set()
    for t in threads:
        t.join(30)
    assert sorted(map(sorted, batches)) == [[1], [2], [3, 4, 5]]
    assert got == {p: p * 10 for p in range(1, 6)}
    assert coalescer._leading == 0 and not coalescer._queue


def test_errors_reach_the_calls_they_belong_to():
    def run_batch(payloads):
        if "all" in payloads:
            raise KeyError("the whole batch failed")
        return [ValueError(p) if p.startswith("bad") else p.upper() for p in payloads]

    coalescer = Coalescer(run_batch)
    assert coalescer.call("ok") == "OK"
    with pytest.raises(ValueError, match="bad1"):
        coalescer.call("bad1")
    with pytest.raises(KeyError, match="whole batch"):
        coalescer.call("all")
    with pytest.raises(RuntimeError, match="answered 0 of 1 calls"):
        Coalescer(lambda payloads: []).call("x")
    with pytest.raises(ValueError, match="max_in_flight must be >= 1"):
        Coalescer(run_batch, max_in_flight=0)


def test_a_batch_waits_for_announced_calls_but_not_for_withdrawn_ones():
    batches = []

    def run_batch(payloads):
        batches.append(sorted(payloads))
        return payloads

    coalescer = Coalescer(run_batch, announced_wait_s=30)
    assert coalescer.call("alone") == "alone"  # nothing announced: no wait
    coalescer.announce()
    coalescer.announce()
    got: dict = {}
    threads = _start_announced(coalescer, ["a"], got)
    time.sleep(0.05)
    assert batches == [["alone"]]  # "a" waits for the other announced call
    threads += _start_announced(coalescer, ["b"], got)
    for t in threads:
        t.join(30)
    assert batches[1:] == [["a", "b"]] and got == {"a": "a", "b": "b"}

    coalescer.announce()
    coalescer.announce()
    threads = _start_announced(coalescer, ["c"], got)
    time.sleep(0.05)
    coalescer.withdraw()  # the other caller failed before its call
    for t in threads:
        t.join(30)
    assert batches[2:] == [["c"]] and coalescer._announced == 0


def _start_announced(coalescer, payloads, got):
    def call(p):
        got[p] = coalescer.call(p, announced=True)

    threads = [threading.Thread(target=call, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    return threads
