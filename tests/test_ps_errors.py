"""One error vocabulary (ps.errors): what a shard raises, the status it answers with, the class the client
raises for that status."""
import grpc
import numpy as np
import pytest

from ps import errors
from ps.errors import (
    CheckpointError,
    CorruptCheckpointError,
    PSAlreadyExists,
    PSError,
    PSFailedPrecondition,
    PSInvalidArgument,
    PSNotFound,
    WrongShard,
    error_for,
    status_of,
)
from ps.service.servicer import _status_of
from ps.store.shard_state import ShardState

SGD = {"dim": 2, "optimizer": {"type": "sgd", "learning_rate": 0.1}}


@pytest.mark.parametrize("status", errors.SERVER_STATUSES + errors.TRANSPORT_STATUSES)
def test_every_status_a_call_can_end_with_has_its_own_class(status):
    code = grpc.StatusCode[status]  # a real gRPC status
    cls = error_for(code.name)
    assert cls is not PSError and issubclass(cls, PSError)


def _raised(fn) -> BaseException:
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def test_the_shard_raises_the_vocabulary_and_the_servicer_maps_each_to_its_status():
    shard = ShardState(0, 2)
    shard.create_table("t", SGD)
    cases = [
        (lambda: shard.table("nope"), PSNotFound, "NOT_FOUND"),
        (lambda: shard.create_table("t", {**SGD, "dim": 3}), PSAlreadyExists, "ALREADY_EXISTS"),
        (lambda: shard.check_owned("t", np.array([1], np.int64)), WrongShard, "FAILED_PRECONDITION"),
        (lambda: shard.increment_global_step(-1), ValueError, "INVALID_ARGUMENT"),
        (lambda: shard.restore("/nonexistent/ckpt-1"), CheckpointError, "FAILED_PRECONDITION"),
    ]
    for fn, cls, status in cases:
        exc = _raised(fn)
        assert isinstance(exc, cls), exc
        assert status_of(exc) == status and _status_of(exc) is grpc.StatusCode[status]
        if isinstance(exc, PSError):  # and the client turns the status back into the same family
            assert issubclass(type(exc), error_for(status)) or error_for(status) is PSFailedPrecondition
    assert _status_of(RuntimeError("a bug")) is grpc.StatusCode.INTERNAL
    assert _status_of(TypeError("bad type")) is grpc.StatusCode.INVALID_ARGUMENT


def test_classes_are_also_the_builtin_exceptions_callers_already_catch():
    assert issubclass(PSInvalidArgument, ValueError) and issubclass(PSNotFound, LookupError)
    assert issubclass(CorruptCheckpointError, CheckpointError) and issubclass(CheckpointError, ValueError)
    assert issubclass(error_for("UNAVAILABLE"), ConnectionError)
    assert error_for("DEADLINE_EXCEEDED") is error_for("UNAVAILABLE")
