"""The PS protocol's version: what a client may rely on a shard understanding.

protobuf drops fields it does not know without a word. A worker newer than its shards would send a step's
claim (`ApplyGradientsRequest.claim_limit`) or ask for dense values with the rows (`LookupRequest.dense`) to
a shard that silently ignores them: the global step would never advance, dense values would never arrive.
So each shard reports the version it speaks in `HealthResponse.protocol_version`, and the client refuses,
before its first call, a shard older than the features it uses. A shard from before versioning reports 0.

History (bump `PROTOCOL_VERSION` with every field a client depends on, and raise `MIN_SHARD_VERSION`
when the client starts to depend on it):
- 1: one round trip per shard per step: `LookupRequest.dense`, `ApplyGradientsRequest.dense` and
  `claim_limit`, `UpdateResponse.global_step`/`claimed`.
- 2: `client_id`/`request_number` in ApplyGradients, AssignAdd (UpdateRequest), DensePush and GlobalStep
  requests: a retried update is applied once. A client does
  not need it (a version-1 shard applies a retry again, as before), so the minimum stays 1.
"""
from __future__ import annotations

PROTOCOL_VERSION = 2
"""The version this code speaks as a shard."""
MIN_SHARD_VERSION = 1
"""The oldest shard version this code works with as a client."""
