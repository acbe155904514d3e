"""Expiry policy: a row expires when the table's newest update time minus the row's update time is at
least `expire_time_days` days. Time is data time (the `update_time` callers pass), never wall clock."""
from __future__ import annotations

import numpy as np

SECONDS_PER_DAY = 86400


def expired_mask(update_times: np.ndarray, max_update_time: int, expire_time_days: int) -> np.ndarray:
    return (max_update_time - update_times) >= expire_time_days * SECONDS_PER_DAY
