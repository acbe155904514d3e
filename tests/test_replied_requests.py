"""RepliedRequests: a request (client, number) runs once; copies get its reply, wait for it while it runs, and
run again only if it failed."""
import threading

import pytest

from ps.errors import ForgottenRequest
from ps.service.replied_requests import RepliedRequests


def test_a_copy_gets_the_first_reply_and_a_new_number_runs():
    replied: RepliedRequests[int] = RepliedRequests()
    runs = []

    def run(value):
        runs.append(value)
        return value

    assert replied.once(5, 1, lambda: run(10)) == 10
    assert replied.once(5, 1, lambda: run(20)) == 10
    assert replied.once(5, 2, lambda: run(30)) == 30
    assert replied.once(6, 1, lambda: run(40)) == 40  # another client's number 1
    assert replied.once(0, 1, lambda: run(50)) == 50 and replied.once(0, 1, lambda: run(60)) == 60  # no id
    assert runs == [10, 30, 40, 50, 60]


def test_a_copy_arriving_while_the_first_runs_waits_for_its_reply():
    replied: RepliedRequests[str] = RepliedRequests()
    entered, release = threading.Event(), threading.Event()
    calls = []

    def slow():
        calls.append("first")
        entered.set()
        assert release.wait(10)
        return "applied"

    results = []
    first = threading.Thread(target=lambda: results.append(replied.once(1, 1, slow)))
    first.start()
    assert entered.wait(10)
    copy = threading.Thread(target=lambda: results.append(replied.once(1, 1, lambda: calls.append("copy"))))
    copy.start()
    copy.join(0.2)
    assert copy.is_alive()  # waiting for the first copy, not running
    release.set()
    first.join(10)
    copy.join(10)
    assert results == ["applied", "applied"] and calls == ["first"]


def test_a_failed_request_is_forgotten_so_its_retry_runs():
    replied: RepliedRequests[int] = RepliedRequests()

    def fail():
        raise ValueError("bad gradients")

    with pytest.raises(ValueError, match="bad gradients"):
        replied.once(3, 1, fail)
    assert replied.once(3, 1, lambda: 7) == 7


def test_memory_is_bounded_per_client_and_in_clients():
    replied: RepliedRequests[int] = RepliedRequests(per_client=2, clients=2)
    for n in (1, 2, 3):
        replied.once(1, n, lambda n=n: n)
    with pytest.raises(ForgottenRequest, match="may have been applied already"):  # reply 1 was dropped
        replied.once(1, 1, lambda: -1)
    assert replied.once(1, 3, lambda: -3) == 3
    replied.once(2, 1, lambda: 1)
    replied.once(3, 1, lambda: 1)  # client 1 was seen least recently: forgotten
    assert replied.once(1, 3, lambda: -3) == -3
    with pytest.raises(ValueError):
        RepliedRequests(per_client=0)
