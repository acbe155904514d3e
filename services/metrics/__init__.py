"""Metrics for every role: a Monolith-style client on prometheus-client, served over HTTP.

    from services.metrics import get_cli, start_metrics_server
    port = start_metrics_server(0)            # logs http://127.0.0.1:<port>/metrics
    get_cli().emit_counter("run_steps.all", 8, {"model_name": "ffm", "cluster_type": "stable"})
    # -> monolith_training_run_steps_all_total{cluster_type="stable",model_name="ffm"} 8.0

Names emitted by this project (prefix `monolith.training`, or `$MONOLITH_METRIC_PREFIX`):

| name | kind | tags | emitted by (in worker.modeling) |
|---|---|---|---|
| run_start_elapsed_time.all | timer | model_name, cluster_type | hooks.throughput |
| run_steps.all / run_steps_elapsed_time.all | counter / timer | model_name, cluster_type | hooks.throughput |
| step_loss | store | — | hooks.step_loss |
| <user name> | store | — | hooks.custom_metric |
| exit_hook | counter | server_type, index, sig | services.exit_hook |
| deep_insight.examples / deep_insight.sampled | counter | model_name | deep_insight |
| step_phase_ms | store | worker, phase | worker.runtime.step_timing (ms per step per phase) |

Processes also expose prometheus-client's `process_*` and `python_*` collectors.
"""
from services.metrics.client import MetricClient, NoopClient, get_cli
from services.metrics.names import format_tags, get_metric_prefix, parse_tags, sanitize_name
from services.metrics.server import metrics_url, start_metrics_server, stop_metrics_server

__all__ = [
    "MetricClient", "NoopClient", "format_tags", "get_cli", "get_metric_prefix", "metrics_url", "parse_tags",
    "sanitize_name", "start_metrics_server", "stop_metrics_server",
]
