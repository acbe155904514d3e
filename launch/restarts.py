"""The restart policy of a launcher (`--restart-failed K`): a role process that fails is started again, up
to K times per role, instead of stopping the job.

What makes a restart safe lives in the roles, not here: a restarted PS shard restores its part of the
latest complete checkpoint, workers retry their calls while it is away, and a restarted worker rejoins
from the job's global step. This module only counts and decides.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Restart:
    """One restart: which process, why, and when (monotonic seconds)."""

    role: str
    index: int
    reason: str
    at: float


@dataclass
class RestartPolicy:
    """Up to `limit` restarts per role (0: the first failure stops the job, as without the flag)."""

    limit: int = 0
    history: list[Restart] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ValueError(f"--restart-failed must be >= 0, got {self.limit}")

    def used(self, role: str) -> int:
        return sum(r.role == role for r in self.history)

    def allow(self, role: str, index: int, reason: str) -> bool:
        """Record and allow a restart of `role:index` (which failed with `reason`) if the role has budget left."""
        if self.used(role) >= self.limit:
            if self.limit:
                log.error("%s:%d failed (%s) and %s has used all %d restarts", role, index, reason, role, self.limit)
            return False
        self.history.append(Restart(role, index, reason, time.monotonic()))
        log.warning("%s:%d failed (%s): restarting it (restart %d of %d for %s)", role, index, reason,
                    self.used(role), self.limit, role)
        return True

    def summary(self) -> str:
        if not self.history:
            return "no restarts"
        counts: dict[str, int] = {}
        for r in self.history:
            counts[r.role] = counts.get(r.role, 0) + 1
        return "restarts: " + ", ".join(f"{role} {n}" for role, n in sorted(counts.items()))
