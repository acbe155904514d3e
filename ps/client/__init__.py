"""The PS seen from other processes: `PSClient` routes ids to their shards, fans calls out in parallel,
retries what is safe to retry, and raises the `ps.errors` class of every status a shard answers with."""
from ps.client.client import PSClient, TableMeta

__all__ = ["PSClient", "TableMeta"]
