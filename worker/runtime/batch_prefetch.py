"""Read and look up upcoming batches on a background thread, with a bound on embedding staleness.

Reading and deduplicating run ahead freely; the PS lookup of step i waits until the gradients of step
i - 1 - staleness have been pushed. staleness 0 is strictly sequential (bit-reproducible); k lets the
lookups of the next k steps overlap the current step's compute and push.

The thread owns the input: it drops its reference to `read` (and so to the tf.data iterator inside it)
when it ends, and `close` does not wait for it. Tearing a tf.data iterator down can block for up to a
minute (docs/input-pipeline-shutdown.md), and a read can block on a slow input; neither may hold up the
training loop, evaluation or the end of the process.

Reads riding on pushes (`complete` given, PS shards): the lookup of batch i has to wait for push
i - 1 - staleness anyway, so that push carries it. The thread reads one batch ahead and offers it while
the previous one waits; the push that bounds it takes it (`take`), sends its reads with its gradients,
and hands back the answer the shards gave after applying the push (`deliver`); `complete` finishes the
batch on this thread. The lookup sees what it would have seen issued right after that push, one round
trip per shard per step instead of two. A batch no push took (or whose push did not answer) is looked
up here once its bound is met, as without `complete`.

`lookup_on_get`: the lookup runs in `get`, on the consumer's thread, right before the batch is used. For
an in-process store, whose lookup costs less than waking another thread: the consumer has pushed every
earlier step's gradients by then (staleness 0 whatever the bound), and only reading runs ahead.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_END = object()


class NoBatchYet(Exception):
    """`get(timeout)` found no batch in time (never an error of the input itself)."""


class Prefetcher:
    def __init__(self, read: Callable[[], Any], lookup: Callable[[Any], Any], staleness: int,
                 lookup_on_get: bool = False, complete: Callable[[Any, Any], Any] | None = None) -> None:
        if not isinstance(staleness, int) or staleness < 0:
            raise ValueError(f"staleness must be an int >= 0, got {staleness!r}")
        self._read, self._lookup, self.staleness = read, lookup, staleness
        self._get_lookup = lookup if lookup_on_get else None
        self._complete = None if lookup_on_get else complete
        self._queue: queue.Queue = queue.Queue(maxsize=staleness + 1)
        self._cond = threading.Condition()
        self._completed = 0
        self._stop = False
        self._offers: dict[int, Any] = {}     # index -> batch read, waiting for push index - 1 - staleness
        self._riding: set[int] = set()        # indices a push took
        self._delivered: dict[int, Any] = {}  # index -> the reads its push answered (None: look it up here)
        self._pushes = 0                      # pushes that called `take` so far
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._produce() if self._complete is None else self._produce_riding()
        finally:
            self._read = self._lookup = None  # type: ignore[assignment]  # the input is torn down here, on this thread

    def _produce(self) -> None:
        i = 0
        try:
            while not self._stop:
                try:
                    item = self._read()
                except StopIteration:
                    break
                if self._get_lookup is not None:
                    self._put(item)
                    continue
                with self._cond:
                    self._cond.wait_for(lambda step=i: self._stop or self._completed >= step - self.staleness)  # type: ignore[misc]
                if self._stop:
                    return
                self._put(self._lookup(item))
                i += 1
        except BaseException as exc:  # re-raised in the consumer
            self._put(exc)
            return
        self._put(_END)

    def _produce_riding(self) -> None:
        i = 0
        try:
            ahead = self._read_ahead(0)
            while not self._stop and ahead is not _END and not isinstance(ahead, BaseException):
                current, ahead = ahead, self._read_ahead(i + 1)  # offered while `current` waits
                item = self._wait_and_look_up(i, current)
                if self._stop:
                    return
                self._put(item)
                i += 1
        except BaseException as exc:  # re-raised in the consumer
            self._put(exc)
            return
        self._put(ahead)  # the end of the input, or its error, after every batch before it

    def _read_ahead(self, i: int) -> Any:
        """Batch i, offered to its push unless its bound is met already; _END at the end, or the read's error."""
        try:
            item = self._read()
        except StopIteration:
            return _END
        except BaseException as exc:
            return exc
        with self._cond:
            if self._completed < i - self.staleness:
                self._offers[i] = item
        return item

    def _wait_and_look_up(self, i: int, item: Any) -> Any:
        """Batch i looked up once pushes 0 .. i - 1 - staleness are done: answered by the push that took it,
        else here."""
        bound = i - self.staleness
        with self._cond:
            # a push took it: its answer comes before that push counts as done
            self._cond.wait_for(lambda: self._stop or i in self._delivered
                                or (self._completed >= bound and i not in self._riding))
            self._offers.pop(i, None)
            self._riding.discard(i)
            reads = self._delivered.pop(i, None)
            if self._stop:
                return None
        if reads is not None:
            return self._complete(item, reads)  # type: ignore[misc]

        return self._lookup(item)

    def take(self) -> tuple[int, Any] | None:
        """Called by each push, in order, before it is sent: (index, batch) of the batch whose lookup waits
        for exactly this push, if it is read; the push must then `deliver` that index, whatever happens."""
        with self._cond:
            push, self._pushes = self._pushes, self._pushes + 1
            index = push + 1 + self.staleness
            item = self._offers.pop(index, None)
            if item is None:
                return None
            self._riding.add(index)
            return index, item

    def deliver(self, index: int, reads: Any) -> None:
        """The reads of a taken batch, answered after its push was applied (None: the push failed or did
        not carry them; the batch is looked up here)."""
        with self._cond:
            self._delivered[index] = reads
            self._cond.notify_all()

    def _put(self, item: Any) -> None:
        while not self._stop:
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self, timeout: float | None = None) -> Any:
        """The next looked-up batch, or None at the end of the data; `NoBatchYet` if none came within
        `timeout` seconds (None: wait)."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise NoBatchYet(f"no batch within {timeout}s") from None
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item if self._get_lookup is None else self._get_lookup(item)

    def done(self) -> None:
        """The current step's gradients are pushed: lets the next lookup proceed."""
        with self._cond:
            self._completed += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Stop reading ahead. Returns at once: no new lookup starts after this, and the thread ends (and
        releases the input) on its own, however long a read in progress or the input's teardown takes."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
