"""Metrics for every role: a Monolith-style client on prometheus-client, served over HTTP."""
from services.metrics.client import MetricClient, NoopClient, get_cli
from services.metrics.names import format_tags, get_metric_prefix, parse_tags, sanitize_name
from services.metrics.server import metrics_url, start_metrics_server, stop_metrics_server

__all__ = [
    "MetricClient", "NoopClient", "format_tags", "get_cli", "get_metric_prefix", "metrics_url", "parse_tags",
    "sanitize_name", "start_metrics_server", "stop_metrics_server",
]
