"""`SharedLookups`: the serving PS lookups of concurrent requests, sent together.

Each lookup of a request is one RPC per serving PS shard, and with a few tens of ids per request the
gRPC and Python cost of those RPCs (on both ends) is most of a distributed request's CPU. So lookups
that arrive while one is in flight wait for it to finish and then go out as one `lookup_many` of all
their ids (duplicates sent once); each request gets its own rows back (`serving.coalescing`). A request
announces its lookup before it parses its ids, and a lookup about to go waits for the announced ones
(up to `ANNOUNCED_WAIT_S`): batches of every request on the way rather than of whoever had queued, so
fewer RPCs per request (benchmarks/serving_bench.py; docs/serving.md). A request alone waits for nobody.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from serving.coalescing import Coalescer

IdsByTable = Mapping[str, np.ndarray]
RowsByTable = dict[str, np.ndarray]
ANNOUNCED_WAIT_S = 0.010
"""How long a lookup about to go waits for the requests that announced theirs (parsing their ids): at most
this much added to a request's latency, and only while other requests are under way."""


class SharedLookups:
    """`lookup(ids_by_table)` -> rows by table (as `PSClient.lookup_many`), batched with concurrent callers."""

    def __init__(self, client, announced_wait_s: float = ANNOUNCED_WAIT_S) -> None:
        self.client = client
        self._calls: Coalescer[IdsByTable, RowsByTable] = Coalescer(self._send, announced_wait_s=announced_wait_s)

    def announce(self) -> None:
        """A `lookup(..., announced=True)` will follow (or `withdraw`): a lookup about to go waits for it."""
        self._calls.announce()

    def withdraw(self) -> None:
        """The announced lookup will not come (the request failed before it)."""
        self._calls.withdraw()

    def lookup(self, ids_by_table: IdsByTable, announced: bool = False) -> RowsByTable:
        return self._calls.call(ids_by_table, announced)

    def _send(self, batch: list[IdsByTable]) -> list[RowsByTable | BaseException]:
        if len(batch) == 1:
            # the ids of one request are distinct per table already: the client only routes them
            return [self.client.lookup_many(batch[0], dedupe=False)]
        tables = list(dict.fromkeys(t for ids in batch for t in ids))
        merged = {t: np.concatenate([np.asarray(ids[t], np.int64) for ids in batch if t in ids]) for t in tables}
        rows = self.client.lookup_many(merged, dedupe=True)  # requests often share ids
        start = dict.fromkeys(tables, 0)
        out: list[RowsByTable | BaseException] = []
        for ids_by_table in batch:
            mine = {}
            for t, ids in ids_by_table.items():
                n = len(ids)
                mine[t] = rows[t][start[t]:start[t] + n]
                start[t] += n
            out.append(mine)
        return out
