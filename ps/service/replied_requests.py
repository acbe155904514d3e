"""At-most-once updates under client retries.

A client retries an update whose call failed with UNAVAILABLE, but the shard may have applied it before the
connection broke: the retry would apply the step's gradients, and claim its global step, a second time. So an
update names its client (a random id) and its number within that client, and the shard keeps the replies to
each client's last few updates. A retry of one it applied gets the same reply and changes nothing; a retry
arriving while the first copy still runs waits for it. A request whose first copy failed is run again (a
failed update changed nothing). A request older than every reply the shard still keeps for its client cannot be
told apart from one already applied, so it is refused (`ForgottenRequest`) rather than risk applying it twice.
After a restart the shard remembers nothing, which is right: whatever it
applied before is gone with it, back to the checkpoint it restored.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

from ps.errors import ForgottenRequest

R = TypeVar("R")


class _ClientReplies(Generic[R]):
    def __init__(self) -> None:
        self.replies: OrderedDict[int, Future[R]] = OrderedDict()
        self.forgotten_through = 0  # the highest request number whose reply was dropped


class RepliedRequests(Generic[R]):
    def __init__(self, per_client: int = 64, clients: int = 4096) -> None:
        """Remember the last `per_client` replies of each of the `clients` most recently seen clients. A client
        has a few updates in flight at a time (one per push thread), so a retry finds its request among them."""
        if per_client < 1 or clients < 1:
            raise ValueError(f"per_client and clients must be >= 1, got {per_client}, {clients}")
        self._per_client, self._clients = per_client, clients
        self._clients_seen: OrderedDict[int, _ClientReplies[R]] = OrderedDict()
        self._lock = threading.Lock()

    def once(self, client: int, number: int, run: Callable[[], R]) -> R:
        """`run()` unless the request (client, number) already ran or runs: then its reply. client 0 (a request
        without an id) always runs. Raises ForgottenRequest for a number at or below one whose reply was dropped."""
        if client == 0:
            return run()
        while True:
            with self._lock:
                seen = self._clients_seen.get(client)
                if seen is None:
                    seen = self._clients_seen[client] = _ClientReplies()
                    if len(self._clients_seen) > self._clients:
                        self._clients_seen.popitem(last=False)
                self._clients_seen.move_to_end(client)
                earlier = seen.replies.get(number)
                if earlier is None:
                    if number <= seen.forgotten_through:
                        raise ForgottenRequest(
                            f"update {number} of client {client:#x} is older than the {self._per_client} replies this "
                            f"shard keeps per client: it may have been applied already, so it is not applied again")
                    mine: Future[R] = Future()
                    seen.replies[number] = mine
                    if len(seen.replies) > self._per_client:
                        dropped, _ = seen.replies.popitem(last=False)
                        seen.forgotten_through = max(seen.forgotten_through, dropped)
            if earlier is None:
                break
            try:
                return earlier.result()
            except BaseException:  # the first copy failed and is forgotten: run this one
                continue
        try:
            reply = run()
        except BaseException as exc:
            with self._lock:
                seen = self._clients_seen.get(client)
                if seen is not None and seen.replies.get(number) is mine:
                    del seen.replies[number]
            mine.set_exception(exc)
            raise
        mine.set_result(reply)
        return reply
