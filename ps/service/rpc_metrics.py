"""Prometheus metrics of a PS shard, on prometheus_client's default REGISTRY.

Other modules in the same process (e.g. the worker's metrics client) use the same registry, so one
`start_http_server` serves them all. Table sizes are read at scrape time by a collector instead of
being updated on every request.
"""
from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

REQUESTS = Counter("monolith_ps_requests_total", "PS RPCs handled", ["shard", "method", "code"])
LATENCY = Histogram(
    "monolith_ps_request_seconds", "PS RPC handling time", ["shard", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
IDS = Counter("monolith_ps_ids_total", "ids received by Lookup/update RPCs", ["shard", "method"])


class ShardCollector:
    """Rows and bytes per table, read from the live shard when Prometheus scrapes."""

    def __init__(self, state) -> None:
        self.state = state

    def collect(self):
        shard = str(self.state.shard_index)
        rows = GaugeMetricFamily("monolith_ps_table_rows", "rows stored per table", labels=["shard", "table"])
        mem = GaugeMetricFamily("monolith_ps_table_memory_bytes", "bytes held per table", labels=["shard", "table"])
        for name, table in list(self.state.tables.items()):
            rows.add_metric([shard, name], table.size)
            mem.add_metric([shard, name], table.memory_bytes)
        dense = GaugeMetricFamily("monolith_ps_dense_variables", "dense variables on this shard", labels=["shard"])
        dense.add_metric([shard], len(self.state.dense))
        step = GaugeMetricFamily("monolith_ps_global_step", "global step (shard 0 holds it)", labels=["shard"])
        step.add_metric([shard], self.state.global_step)
        yield from (rows, mem, dense, step)


def register_shard(state) -> ShardCollector:
    collector = ShardCollector(state)
    REGISTRY.register(collector)
    return collector
