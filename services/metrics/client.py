"""The metric client: Monolith's `emit_counter/emit_timer/emit_store` API on prometheus-client.

The original's open-source client is a no-op stub; this one records into the process's default
Prometheus registry, which each role serves over HTTP (`start_metrics_server`). counter → Counter,
timer → Histogram (seconds buckets), store → Gauge; tags become labels. A name keeps the label set it
was first emitted with: Prometheus cannot change it, so a different set is an error that names both.
"""
from __future__ import annotations

import logging
import math
import os
import threading

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, write_to_textfile

from services.metrics.names import Tags, full_name, get_metric_prefix, parse_tags

log = logging.getLogger(__name__)

TEXTFILE_ENV = "MONOLITH_METRICS_TEXTFILE"

# 100 µs .. 1 h: covers per-op latencies (embedding lookups) and per-run times (start-up, checkpoints).
TIMER_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, math.inf,
)

_KINDS = {"counter": Counter, "timer": Histogram, "store": Gauge}
_metrics: dict[str, tuple[str, tuple[str, ...], object]] = {}
_lock = threading.Lock()


def _metric(kind: str, name: str, labels: tuple[str, ...], raw_name: str):
    with _lock:
        known = _metrics.get(name)
        if known is None:
            kwargs = {"buckets": TIMER_BUCKETS} if kind == "timer" else {}
            metric = _KINDS[kind](name, f"monolith {kind} {raw_name}", labels, registry=REGISTRY, **kwargs)
            _metrics[name] = (kind, labels, metric)
            return metric
    known_kind, known_labels, metric = known
    if known_kind != kind:
        raise ValueError(f"metric {name!r} was first emitted as a {known_kind}, now as a {kind}")
    if known_labels != labels:
        raise ValueError(f"metric {name!r} was first emitted with tags {list(known_labels)}, now with {list(labels)}")
    return metric


def _number(name: str, value, finite: bool) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"metric {name!r}: value {value!r} is not a number") from None
    if finite and not math.isfinite(number):
        raise ValueError(f"metric {name!r}: value {value!r} is not finite")
    return number


class MetricClient:
    """Emits into the default Prometheus registry under `prefix` (dots and other characters → `_`)."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = get_metric_prefix() if prefix is None else prefix

    def _labelled(self, kind: str, name: str, tags: Tags):
        labels = parse_tags(tags)
        keys = tuple(sorted(labels))
        metric = _metric(kind, full_name(self.prefix, name), keys, name)
        return metric.labels(**labels) if keys else metric

    def emit_counter(self, name: str, value=1, tags: Tags = None) -> None:
        """Add `value` (≥ 0, finite) to counter `name` (exposed as `<prefix>_<name>_total`)."""
        number = _number(name, value, finite=True)
        if number < 0:
            raise ValueError(f"counter {name!r}: value {value!r} is negative (counters only go up)")
        self._labelled("counter", name, tags).inc(number)

    def emit_timer(self, name: str, value, tags: Tags = None) -> None:
        """Observe a duration in seconds (finite) into histogram `name`."""
        self._labelled("timer", name, tags).observe(_number(name, value, finite=True))

    def emit_store(self, name: str, value, tags: Tags = None) -> None:
        """Set gauge `name`; NaN is kept (a NaN loss is worth seeing), anything non-numeric is an error."""
        self._labelled("store", name, tags).set(_number(name, value, finite=False))

    def flush(self) -> None:
        """Write the registry to `$MONOLITH_METRICS_TEXTFILE` if set (the node-exporter textfile format),
        so metrics emitted just before exit survive the process; otherwise nothing to do."""
        path = os.environ.get(TEXTFILE_ENV)
        if path:
            write_to_textfile(path, REGISTRY)
            log.info("metrics written to %s", path)


class NoopClient:
    """Same API, records nothing: for tools and tests that must not touch the process registry."""

    prefix = ""

    def emit_counter(self, name: str, value=1, tags: Tags = None) -> None:
        pass

    def emit_timer(self, name: str, value, tags: Tags = None) -> None:
        pass

    def emit_store(self, name: str, value, tags: Tags = None) -> None:
        pass

    def flush(self) -> None:
        pass


_clients: dict[str, MetricClient] = {}


def get_cli(prefix: str | None = None, *, noop: bool = False) -> MetricClient | NoopClient:
    """The client for `prefix` (default `get_metric_prefix()`); `noop=True` gives one that records nothing."""
    if noop:
        return NoopClient()
    prefix = get_metric_prefix() if prefix is None else prefix
    with _lock:
        return _clients.setdefault(prefix, MetricClient(prefix))
