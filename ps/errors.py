"""One error vocabulary for the PS and the serving role, used on both ends of the wire.

The store and the servicer raise these classes; each names the gRPC status it travels as
(`status_of`), and the client turns a status back into the same class (`error_for`), so a caller
catches `PSNotFound` whether the table lives in this process (local mode) or on a shard. Every class
is also the matching built-in exception where one exists (`PSInvalidArgument` is a `ValueError`,
`PSNotFound` a `LookupError`, `PSUnavailable` a `ConnectionError`), so generic handlers keep working.
Statuses are names of `grpc.StatusCode` members; this module itself needs no gRPC. The serving role
(`monolith serve`, `monolith serve-ps`) answers with the same classes: an unknown model is a `PSNotFound`,
a malformed request a `PSInvalidArgument`, a serving PS shard that is down a `PSUnavailable`.
"""
from __future__ import annotations


class PSError(RuntimeError):
    """A shard refused or failed a call. Raised by the client it names the shard, its address and the
    `grpc.StatusCode` (`code`); raised in-process those are None."""

    status = "UNKNOWN"

    def __init__(self, message: str, shard: int | None = None, address: str | None = None,
                 code: object | None = None) -> None:
        super().__init__(message)
        self.shard, self.address, self.code = shard, address, code


class PSInvalidArgument(PSError, ValueError):
    """The request's content is wrong (ids, shapes, values, config): fix the caller."""

    status = "INVALID_ARGUMENT"


class PSNotFound(PSError, LookupError):
    """Unknown table or dense variable."""

    status = "NOT_FOUND"


class PSAlreadyExists(PSError):
    """A table, dense variable or barrier exists with a different definition."""

    status = "ALREADY_EXISTS"


class PSFailedPrecondition(PSError):
    """The shard cannot do this in its current state (wrong shard, unusable checkpoint)."""

    status = "FAILED_PRECONDITION"


class WrongShard(PSFailedPrecondition):
    """The ids or the variable belong to another shard: client and shard disagree on the shard count."""


class IncompatibleShard(PSFailedPrecondition):
    """The shard speaks an older PS protocol than this client needs (ps/wire/protocol_version.py): it would
    silently ignore fields the client relies on. Upgrade the shards before the workers."""


class ReadOnlyShard(PSFailedPrecondition):
    """An update sent to a shard that serves exported rows read-only (a serving PS shard refuses every update
    its update policy does not let through)."""


class ForgottenRequest(PSFailedPrecondition):
    """A retried update older than the replies the shard keeps for its client (ps/service/replied_requests.py):
    it may have been applied already, so the shard refuses it rather than risk applying it twice."""


class CheckpointError(PSFailedPrecondition, ValueError):
    """A checkpoint is missing, incomplete or not restorable (the message names the directory or file)."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file is truncated, fails its checksum, or does not match its manifest."""


class BarrierTimeout(PSError, TimeoutError):
    """Not every participant reached a barrier in time; `missing` names the ones that did not (raised by the
    client while it waits, never sent by a shard)."""

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message, 0)
        self.missing = missing


class PSResourceExhausted(PSError, ValueError):
    """A message exceeded the size limit: split the batch."""

    status = "RESOURCE_EXHAUSTED"


class PSUnavailable(PSError, ConnectionError):
    """The shard did not answer (within the retry budget)."""

    status = "UNAVAILABLE"


class PSUnimplemented(PSError):
    """The shard does not know the method: client and server come from different versions."""

    status = "UNIMPLEMENTED"


class PSUnauthenticated(PSError, PermissionError):
    """The shard refused the caller's credentials (auth token; see services/transport_security.py)."""

    status = "UNAUTHENTICATED"


class PSInternal(PSError):
    """A bug on the shard (the shard's log has the traceback); the call may or may not have happened."""

    status = "INTERNAL"


SERVER_STATUSES = ("INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION", "INTERNAL")
"""What the servicer answers with (`status_of`)."""
TRANSPORT_STATUSES = ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "CANCELLED",
                      "UNKNOWN", "UNAUTHENTICATED")
"""What gRPC itself (or the token check in front of the servicer) reports for a call (too large, shard down,
too slow, method unknown, credentials refused)."""

_BY_STATUS: dict[str, type[PSError]] = {
    cls.status: cls for cls in (PSInvalidArgument, PSNotFound, PSAlreadyExists, PSFailedPrecondition,
                                PSResourceExhausted, PSUnavailable, PSUnimplemented, PSUnauthenticated, PSInternal)
}
_BY_STATUS["DEADLINE_EXCEEDED"] = PSUnavailable
_BY_STATUS["CANCELLED"] = PSUnavailable
_BY_STATUS["UNKNOWN"] = PSInternal


def status_of(exc: BaseException) -> str:
    """The status a failed call answers with: the vocabulary's own, any other bad input is
    INVALID_ARGUMENT, anything else a bug (INTERNAL)."""
    if isinstance(exc, PSError):
        return exc.status
    if isinstance(exc, ValueError | TypeError):
        return "INVALID_ARGUMENT"
    return "INTERNAL"


def error_for(status: str) -> type[PSError]:
    """The class the client raises for a status (the base `PSError` for one the vocabulary lacks)."""
    return _BY_STATUS.get(status, PSError)
