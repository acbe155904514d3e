"""Names inside an export base that the exporter (worker/export) writes and the serving role reads.

Both sides import them from here, since neither may import the other (docs/architecture.md). docs/serving.md
describes the layouts.
"""
from __future__ import annotations

ENTRY = "entry"
"""Sub-model of a distributed export that holds the dense model: `<export_base>/entry/<version>/`."""
ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
"""TF Serving's warmup file, under assets.extra/ of a version."""
ENTRY_META = "entry.json"
"""Under assets.extra/ of an entry version: serving shards, tables and their signature keys, the version."""
PS_SHARD_DIR = "ps_shard"
"""Under assets.extra/ of a `ps_<i>/<version>`: the shard's rows in the PS store's format (`shard-i-of-m/`, as
a shard writes its part of a checkpoint), which `monolith serve-ps` loads."""


def ps_sub_model(index: int) -> str:
    """The sub-model of serving PS shard `index` in a distributed export: `<export_base>/ps_<index>/<version>/`."""
    return f"ps_{index}"
