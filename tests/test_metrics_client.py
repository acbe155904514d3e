"""The metric client on prometheus-client, checked by scraping a real /metrics endpoint over HTTP."""
import math

import pytest
from prometheus_client import REGISTRY

from services.metrics import (
    NoopClient,
    format_tags,
    get_cli,
    get_metric_prefix,
    metrics_url,
    parse_tags,
    sanitize_name,
    start_metrics_server,
    stop_metrics_server,
)
from services.metrics.client import TIMER_BUCKETS
from tests.scrape import scrape


@pytest.fixture(scope="module")
def metrics_port():
    port = start_metrics_server(0)
    yield port
    stop_metrics_server(port)


def test_names_and_tags_are_mapped_predictably():
    assert sanitize_name("monolith.training.run_steps.all") == "monolith_training_run_steps_all"
    assert sanitize_name("a-b c/d:e") == "a_b_c_d:e"
    assert sanitize_name("9lives") == "_9lives"
    assert parse_tags("model_name=m|cluster_type=stable") == {"model_name": "m", "cluster_type": "stable"}
    assert parse_tags("name=tbl|") == {"name": "tbl"}
    assert parse_tags("k=a=b") == {"k": "a=b"}
    assert parse_tags({"worker.index": 3}) == {"worker_index": "3"}
    assert parse_tags(None) == parse_tags("") == {}
    assert parse_tags(format_tags({"a": 1, "b": "x"})) == {"a": "1", "b": "x"}


@pytest.mark.parametrize("bad, message", [
    ("novalue", "not of the form key=value"), ("=v", "not of the form key=value"),
    ("a=1|a=2", "label 'a' twice"), ("__name__=x", "reserves"), (42, "tags must be a dict"),
])
def test_bad_tags_are_named(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        parse_tags(bad)


def test_format_tags_refuses_what_cannot_round_trip():
    with pytest.raises(ValueError, match="'a|b'"):
        format_tags({"k": "a|b"})


def test_prefix_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("MONOLITH_METRIC_PREFIX", raising=False)
    assert get_metric_prefix() == "monolith.training"
    monkeypatch.setenv("MONOLITH_METRIC_PREFIX", "monolith.containers")
    assert get_cli().prefix == "monolith.containers"


def test_counter_timer_store_are_served_with_labels(metrics_port):
    cli = get_cli("monolith.training")
    tags = {"model_name": "ffm", "cluster_type": "stable"}
    cli.emit_counter("client_test.steps.all", 7, tags)
    cli.emit_counter("client_test.steps.all", 5, "model_name=ffm|cluster_type=stable")
    cli.emit_counter("client_test.steps.all", 1, {"model_name": "other", "cluster_type": "stable"})
    for v in (0.003, 0.2, 4.0):
        cli.emit_timer("client_test.latency", v, "ps=1")
    cli.emit_store("client_test.loss", "0.25")
    cli.emit_store("client_test.nan_loss", float("nan"))

    s = scrape(metrics_port)
    assert s.types["monolith_training_client_test_steps_all"] == "counter"
    assert s.value("monolith_training_client_test_steps_all_total", model_name="ffm", cluster_type="stable") == 12
    assert s.value("monolith_training_client_test_steps_all_total", model_name="other", cluster_type="stable") == 1
    assert 'monolith_training_client_test_steps_all_total{cluster_type="stable",model_name="ffm"} 12.0' in s.text
    assert s.types["monolith_training_client_test_latency"] == "histogram"
    assert s.value("monolith_training_client_test_latency_count", ps="1") == 3
    assert s.value("monolith_training_client_test_latency_sum", ps="1") == pytest.approx(4.203)
    assert s.value("monolith_training_client_test_latency_bucket", ps="1", le="0.005") == 1
    assert s.value("monolith_training_client_test_latency_bucket", ps="1", le="5.0") == 3
    assert len(s.labelsets("monolith_training_client_test_latency_bucket")) == len(TIMER_BUCKETS)
    assert s.types["monolith_training_client_test_loss"] == "gauge"
    assert s.value("monolith_training_client_test_loss") == 0.25
    assert math.isnan(s.value("monolith_training_client_test_nan_loss"))
    assert s.value("process_resident_memory_bytes") > 0


def test_bad_emissions_name_the_metric():
    cli = get_cli("monolith.training")
    cli.emit_counter("client_test.tagged", 1, {"a": 1})
    with pytest.raises(ValueError, match=r"client_test_tagged.*tags \['a'\], now with \['b'\]"):
        cli.emit_counter("client_test.tagged", 1, {"b": 1})
    with pytest.raises(ValueError, match="first emitted as a counter, now as a store"):
        cli.emit_store("client_test.tagged", 1, {"a": 1})
    with pytest.raises(ValueError, match="negative"):
        cli.emit_counter("client_test.tagged", -1, {"a": 1})
    with pytest.raises(ValueError, match="'client_test.t2': value inf is not finite"):
        cli.emit_timer("client_test.t2", float("inf"))
    with pytest.raises(ValueError, match="'abc' is not a number"):
        cli.emit_store("client_test.s2", "abc")
    assert REGISTRY.get_sample_value("monolith_training_client_test_tagged_total", {"a": "1"}) == 1


def test_noop_client_records_nothing(metrics_port):
    cli = get_cli(noop=True)
    assert isinstance(cli, NoopClient)
    cli.emit_counter("client_test.noop", 1, {"a": 1})
    cli.emit_timer("client_test.noop_t", 1.0)
    cli.flush()
    assert "client_test_noop" not in scrape(metrics_port).text


def test_flush_writes_a_textfile(tmp_path, monkeypatch):
    path = tmp_path / "metrics.prom"
    monkeypatch.setenv("MONOLITH_METRICS_TEXTFILE", str(path))
    cli = get_cli("monolith.training")
    cli.emit_store("client_test.flushed", 3)
    cli.flush()
    assert "monolith_training_client_test_flushed 3.0" in path.read_text()


def test_servers_can_be_stopped():
    port = start_metrics_server(0)
    assert scrape(port).text
    stop_metrics_server(port)
    with pytest.raises(OSError):
        scrape(port)
    with pytest.raises(KeyError, match=str(port)):
        stop_metrics_server(port)


def test_ipv6_loopback_is_served():
    port = start_metrics_server(0, addr="::1")
    try:
        assert metrics_url("::1", port) == f"http://[::1]:{port}/metrics"
        assert "python_info" in scrape(port, host="[::1]").text
    finally:
        stop_metrics_server(port)
