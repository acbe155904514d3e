"""`Coalescer`: calls from concurrent threads that queue behind one in flight go out together.

A call runs at once while fewer than `max_in_flight` batches run. Calls that arrive while that many run
wait for one to finish and then run as one batch, so the fixed cost of a call (an RPC, a TensorFlow
function call, Python bookkeeping) is paid once per batch instead of once per request. There is no timer
and no batch size to tune: the batch is whatever queued while the others ran. More than one batch in flight
keeps every core busy when one batch's work cannot use them all.

A caller that runs a batch leads it: it runs everything queued (its own call included), hands each
waiting caller its result or error, then wakes the oldest call queued since, which leads the next batch.

Callers can also `announce` a call they are about to make (and `withdraw` it if they fail first): a
leader then waits for the announced calls to queue, up to `announced_wait_s`, before it takes the batch.
Under concurrent load that makes batches of everyone already on the way instead of whoever happened to
have queued; a call nobody else announced goes at once.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P")
R = TypeVar("R")


@dataclass
class _Call(Generic[P, R]):
    payload: P
    woken: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    result: R | None = None
    error: BaseException | None = None


class Coalescer(Generic[P, R]):
    """`call(payload)` -> `run_batch([payload, ...])[i]`, batched with concurrent callers.

    `run_batch` returns one entry per payload, in order: the result, or the exception that caller gets.
    If `run_batch` itself raises, every call of the batch gets that error.
    """

    def __init__(self, run_batch: Callable[[list[P]], list[R | BaseException]], max_in_flight: int = 1,
                 announced_wait_s: float = 0.0) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self._run_batch = run_batch
        self._max_in_flight = max_in_flight
        self._announced_wait_s = announced_wait_s
        self._lock = threading.Lock()
        self._all_queued = threading.Condition(self._lock)
        """Notified when the last announced call queues or is withdrawn."""
        self._queue: list[_Call[P, R]] = []
        self._leading = 0
        self._announced = 0

    def announce(self) -> None:
        """A `call(..., announced=True)` from this caller will follow (or a `withdraw`)."""
        with self._lock:
            self._announced += 1

    def withdraw(self) -> None:
        """The call this caller announced will not come."""
        with self._lock:
            self._arrived()

    def _arrived(self) -> None:
        self._announced -= 1
        if self._announced == 0:
            self._all_queued.notify_all()

    def call(self, payload: P, announced: bool = False) -> R:
        mine: _Call[P, R] = _Call(payload)
        with self._lock:
            if announced:
                self._arrived()
            lead = self._leading < self._max_in_flight
            if lead:
                self._leading += 1
            else:
                self._queue.append(mine)
        if not lead:
            mine.woken.wait()
            lead = not mine.done  # woken to lead the next batch
        if lead:
            self._lead(mine)
        if mine.error is not None:
            raise mine.error
        return mine.result  # type: ignore[return-value]

    def _lead(self, mine: _Call[P, R]) -> None:
        with self._lock:
            if self._announced and self._announced_wait_s > 0:
                self._all_queued.wait_for(lambda: self._announced <= 0, self._announced_wait_s)
            batch, self._queue = [mine, *self._queue], []
        try:
            results = self._run_batch([c.payload for c in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch answered {len(results)} of {len(batch)} calls")
            for c, r in zip(batch, results):
                if isinstance(r, BaseException):
                    c.error = r
                else:
                    c.result = r
        except BaseException as exc:  # every call of the batch fails with the batch's error
            for c in batch:
                c.error = exc
        for c in batch:
            c.done = True
        with self._lock:
            following = self._queue.pop(0) if self._queue else None
            if following is None:
                self._leading -= 1  # else the lead passes to `following`
        for c in batch:
            c.woken.set()
        if following is not None:
            following.woken.set()
