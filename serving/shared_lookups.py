"""`SharedLookups`: the serving PS lookups of concurrent requests, sent together.

Each lookup of a request is one RPC per serving PS shard, and with a few tens of ids per request the
gRPC and Python cost of those RPCs (on both ends) is most of a distributed request's CPU. So lookups
that arrive while one is in flight wait for it to finish and then go out as one `lookup_many` of all
their ids (duplicates sent once); each request gets its own rows back. A lone request is never held
back: it is sent at once, as before; only requests that would have queued behind another share.

One request at a time leads: it sends the batch of everything queued (its own lookup included), hands
each waiting request its rows or the error, then wakes the oldest lookup queued since, which leads the
next batch.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Lookup:
    ids: Mapping[str, np.ndarray]
    woken: threading.Event = field(default_factory=threading.Event)
    rows: dict[str, np.ndarray] | None = None
    error: BaseException | None = None


class SharedLookups:
    """`lookup(ids_by_table)` -> rows by table (as `PSClient.lookup_many`), batched with concurrent callers."""

    def __init__(self, client) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._queue: list[_Lookup] = []
        self._leading = False

    def lookup(self, ids_by_table: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        mine = _Lookup(ids_by_table)
        with self._lock:
            lead = not self._leading
            if lead:
                self._leading = True
            else:
                self._queue.append(mine)
        if not lead:
            mine.woken.wait()
            lead = mine.rows is None and mine.error is None  # woken to lead the next batch
        if lead:
            self._lead(mine)
        if mine.error is not None:
            raise mine.error
        assert mine.rows is not None
        return mine.rows

    def _lead(self, mine: _Lookup) -> None:
        """Send `mine` and everything queued; then hand the lead to the oldest lookup queued since, if any."""
        with self._lock:
            batch, self._queue = [mine, *self._queue], []
        try:
            self._send(batch)
        except BaseException as exc:  # every request of the batch fails with the lookup's error
            for item in batch:
                item.error = exc
        with self._lock:
            following = self._queue.pop(0) if self._queue else None
            self._leading = following is not None
        for item in batch:
            item.woken.set()
        if following is not None:
            following.woken.set()

    def _send(self, batch: list[_Lookup]) -> None:
        if len(batch) == 1:
            # the ids of one request are distinct per table already: the client only routes them
            batch[0].rows = self.client.lookup_many(batch[0].ids, dedupe=False)
            return
        tables = list(dict.fromkeys(t for item in batch for t in item.ids))
        merged = {t: np.concatenate([np.asarray(item.ids[t], np.int64) for item in batch if t in item.ids])
                  for t in tables}
        rows = self.client.lookup_many(merged, dedupe=True)  # requests often share ids
        start = dict.fromkeys(tables, 0)
        for item in batch:
            mine = {}
            for t, ids in item.ids.items():
                n = len(ids)
                mine[t] = rows[t][start[t]:start[t] + n]
                start[t] += n
            item.rows = mine
