"""What an unbounded input (a Kafka stream) tells the training runtime, so checkpoints can hold its position.

A stream input's dataset yields batches that carry their sequence number under `STREAM_BATCH_KEY`; the
runtime removes it before the model sees the features, and reports which batches' gradients were
applied. The source answers "how far had the input got through batch n" (`offsets_through`), which the
runtime writes into the checkpoint taken after batch n, and positions its readers at the offsets of the
checkpoint a restarted job restores (`start`). `input_fn` creates the source; `register` hands it to the
runtime that is calling `input_fn` (`collect`).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Protocol

from worker.modeling.thread_scope import ThreadScope

STREAM_BATCH_KEY = "__stream_batch__"
"""The feature holding a stream batch's sequence number (int64 scalar), removed before `model_fn`."""

Offsets = dict[str, dict[int, int]]
"""{topic: {partition: offset of the next record}}."""

Partition = tuple[str, int]


class StreamSource(Protocol):
    """Driven by the runtime, in this order: `join`, `poll_assignment` (until every worker's assignment
    together covers `partitions()`), `start`, then the dataset is read; `offsets_through`/`commit` at
    checkpoints; `close`."""

    def join(self) -> None: ...

    def poll_assignment(self) -> frozenset[Partition]: ...

    def partitions(self) -> frozenset[Partition]: ...

    def start(self, offsets: Offsets | None) -> None: ...

    def offsets_through(self, seq: int) -> Offsets:
        """Where every partition this reader was given stands once batches 0..seq are trained (-1: none)."""
        ...

    def commit(self, offsets: Offsets) -> None: ...

    def close(self) -> None: ...


class BatchPositions:
    """Per-batch position deltas, folded into one map as the runtime confirms batches (bounded memory).

    Records skipped while no example is waiting for a batch (malformed ones) are done once every batch
    before them is: `skipped(after_seq, ...)` counts them in `through(after_seq)`, so a stream that ends
    on bad records does not read them again after a restart."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base: dict[Partition, int] = {}
        self._base_seq = -1
        self._pending: dict[int, dict[Partition, int]] = {}
        self._skipped: tuple[int, dict[Partition, int]] = (-2, {})

    def reset(self, positions: dict[Partition, int]) -> None:
        with self._lock:
            self._base, self._base_seq, self._pending, self._skipped = dict(positions), -1, {}, (-2, {})

    def record(self, seq: int, delta: dict[Partition, int]) -> None:
        with self._lock:
            self._pending[seq] = dict(delta)

    def skipped(self, after_seq: int, delta: dict[Partition, int]) -> None:
        with self._lock:
            known = self._skipped[1] if self._skipped[0] == after_seq else {}
            self._skipped = (after_seq, {**known, **delta})

    def through(self, seq: int) -> Offsets:
        with self._lock:
            if seq < self._base_seq:
                raise ValueError(f"stream position of batch {seq} was asked after batch {self._base_seq}'s")
            missing = [s for s in range(self._base_seq + 1, seq + 1) if s not in self._pending]
            if missing:
                raise ValueError(f"stream batch {missing[0]} was never produced (batches must reach the trainer in "
                                 f"order)")
            for s in range(self._base_seq + 1, seq + 1):
                self._base.update(self._pending.pop(s))
            self._base_seq = seq
            if self._skipped[0] == seq:
                self._base.update(self._skipped[1])
            out: Offsets = {}
            for (topic, partition), offset in sorted(self._base.items()):
                out.setdefault(topic, {})[partition] = offset
            return out


_collecting: ThreadScope[list[StreamSource]] = ThreadScope()


def collect() -> contextlib.AbstractContextManager[list[StreamSource]]:
    """The stream sources `input_fn` creates while this is open."""
    return _collecting.scope([])


def register(source: StreamSource) -> None:
    sources = _collecting.current()
    if sources is not None:
        sources.append(source)
