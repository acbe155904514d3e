"""Prometheus metrics of `monolith serve`, on prometheus_client's default REGISTRY (served at `/metrics`).

Requests and their handling time per method and status code are counted as they are answered; the
loaded versions are read from the live `ModelVersions` when Prometheus scrapes.
"""
from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

REQUESTS = Counter("monolith_serving_requests_total", "PredictionService/ModelService calls answered",
                   ["model", "method", "code"])
LATENCY = Histogram(
    "monolith_serving_request_seconds", "time to answer one call (decode, run, pack)", ["model", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
ROWS = Counter("monolith_serving_rows_total", "input rows (the batch dimension) of answered Predict calls",
               ["model"])
MERGED = Histogram("monolith_serving_requests_per_call", "Predict requests answered by one model call (concurrent "
                   "requests run as one batch)", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64))


class VersionsCollector:
    """The version answering requests without a version, how many are loaded, and how many failed to load."""

    def __init__(self, versions) -> None:
        self.versions = versions

    def collect(self):
        name = self.versions.name
        loaded = self.versions.loaded_versions
        latest = GaugeMetricFamily("monolith_serving_model_version", "newest loaded version (serves requests "
                                   "that name none); -1 before the first", labels=["model"])
        latest.add_metric([name], loaded[-1] if loaded else -1)
        count = GaugeMetricFamily("monolith_serving_loaded_versions", "versions loaded", labels=["model"])
        count.add_metric([name], len(loaded))
        failed = GaugeMetricFamily("monolith_serving_failed_versions", "versions on disk that failed to load",
                                   labels=["model"])
        failed.add_metric([name], len(self.versions.failed))
        yield from (latest, count, failed)


def register_versions(versions) -> VersionsCollector:
    collector = VersionsCollector(versions)
    REGISTRY.register(collector)
    return collector
