"""tf.data service across real processes: 1 dispatcher + 2 data workers + 2 consumers, exactly once."""
from __future__ import annotations

import collections

import pytest

from services.ports import free_port
from tests.processes import wait_for

pytestmark = pytest.mark.slow

EXAMPLES = 600
EPOCHS = 2


def test_every_example_exactly_once_per_epoch(processes, tmp_path):
    dport, w0, w1 = free_port(), free_port(), free_port()
    disp = processes.start(["-m", "launch.cli", "dispatcher", "--port", str(dport)], name="dispatcher")
    workers = [
        processes.start(["-m", "launch.cli", "dsworker", "--dispatcher", f"grpc://127.0.0.1:{dport}",
                         "--port", str(p), "--index", str(i)], name=f"dsworker{i}")
        for i, p in enumerate((w0, w1))
    ]
    consumers = []
    for i in range(2):
        consumers.append(processes.start([
            "-m", "tests.ds_consumer", "--service", f"grpc://127.0.0.1:{dport}",
            "--wait-for", f"127.0.0.1:{dport},127.0.0.1:{w0},127.0.0.1:{w1}",
            "--job-name", "exactly-once", "--examples", str(EXAMPLES), "--epochs", str(EPOCHS),
            "--index", str(i), "--consumers", "2", "--barrier-dir", str(tmp_path),
            "--out", str(tmp_path / f"c{i}.txt"),
        ], name=f"consumer{i}"))
    for c in consumers:
        assert c.wait(150) == 0, processes.log_of(c)
    for p in (disp, *workers):
        assert p.poll() is None, f"data-service process died:\n{processes.log_of(p)}"
        assert "ready" in processes.log_of(p)

    per_consumer = []
    for i in range(2):
        rows = [tuple(map(int, line.split())) for line in (tmp_path / f"c{i}.txt").read_text().splitlines()]
        per_consumer.append(rows)
    for epoch in range(EPOCHS):
        ids = [eid for rows in per_consumer for e, eid in rows if e == epoch]
        counts = collections.Counter(ids)
        assert sorted(counts) == list(range(EXAMPLES)), f"epoch {epoch}: missing ids"
        dupes = {k: v for k, v in counts.items() if v != 1}
        assert not dupes, f"epoch {epoch}: ids read more than once: {dupes}"
        shares = [sum(1 for e, _ in rows if e == epoch) for rows in per_consumer]
        assert all(s > 0 for s in shares), f"epoch {epoch}: one consumer read nothing ({shares})"

    for p in (disp, *workers):
        assert processes.stop(p) == 0, processes.log_of(p)
    wait_for(lambda: all(p.poll() is not None for p in (disp, *workers)), 5, what="data service shutdown")
