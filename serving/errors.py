"""The serving error vocabulary: each error is one gRPC status, raised by plain functions and turned into
that status by the servicers (so a bad request never takes a server down)."""
from __future__ import annotations

import grpc


class ServingError(Exception):
    code = grpc.StatusCode.INTERNAL


class NotFound(ServingError):
    """Unknown model, version or signature."""

    code = grpc.StatusCode.NOT_FOUND


class InvalidArgument(ServingError):
    """Wrong input names, dtypes or shapes; undecodable inputs; malformed requests."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServingError):
    """Nothing loaded yet, or a serving PS shard is down (the message names it)."""

    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(ServingError):
    """The request is valid but not for this servable (e.g. Classify on a signature that cannot classify)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unimplemented(ServingError):
    code = grpc.StatusCode.UNIMPLEMENTED
