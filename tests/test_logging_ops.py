"""Logging ops: monotonic timestamps, timers from inside tf.function, machine health."""
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client import REGISTRY

from protos import monitoring_pb2
from services.metrics import start_metrics_server, stop_metrics_server
from tests.scrape import scrape
from worker.modeling import logging_ops


def test_tensors_timestamp_is_monotonic():
    x = tf.constant([1.0, 2.0])
    (old_x,), old = logging_ops.tensors_timestamp([x])
    (new_x,), new = logging_ops.tensors_timestamp([x * 2])
    assert old.dtype == tf.int64 and old.shape == ()
    assert int(new) >= int(old)
    assert np.array_equal(new_x.numpy(), [2.0, 4.0]) and np.array_equal(old_x.numpy(), [1.0, 2.0])

    @tf.function
    def step(a):
        out, t0 = logging_ops.tensors_timestamp({"a": a})
        out2, t1 = logging_ops.tensors_timestamp(tf.reduce_sum(out["a"]))
        return out2, t0, t1

    total, t0, t1 = step(tf.ones([3]))
    assert float(total) == 3.0 and int(t1) >= int(t0) >= int(new)


def test_emit_timer_inside_tf_function():
    port = start_metrics_server(0)
    try:
        @tf.function
        def step(v):
            logging_ops.emit_timer("logging_ops.step_time", v, {"model_name": "m", "ps": 0})
            return v + 1

        for v in (0.5, 1.5, 0.0):
            step(tf.constant(v))
        logging_ops.emit_timer("logging_ops.eager", 0.0)
        s = scrape(port)
    finally:
        stop_metrics_server(port)
    assert s.value("monolith_training_logging_ops_step_time_count", model_name="m", ps="0") == 3
    assert s.value("monolith_training_logging_ops_step_time_sum", model_name="m", ps="0") == 2.0
    assert s.value("monolith_training_logging_ops_eager_count") == 1
    with pytest.raises(ValueError, match="cannot be written"):
        logging_ops.emit_timer("x", 1.0, {"a": "b|c"})


def test_machine_health_within_limit():
    info = logging_ops.machine_info(mem_limit=1 << 50)
    parsed = monitoring_pb2.MachineInfo.FromString(info.numpy())
    assert parsed.mem_limit_bytes == 1 << 50 and parsed.pid > 0
    assert logging_ops.check_machine_health(info).numpy() == b""


def test_machine_health_out_of_memory():
    health = tf.function(lambda: logging_ops.check_machine_health(logging_ops.machine_info(mem_limit=0)))()
    result = monitoring_pb2.MachineHealthResult.FromString(health.numpy())
    assert result.status == monitoring_pb2.MachineHealthResult.OUT_OF_MEMORY
    assert result.mem_limit_bytes == 0
    rss = REGISTRY.get_sample_value("process_resident_memory_bytes")
    assert 0.5 * rss < result.mem_usage_bytes < 2 * rss
    assert "more than the 0-byte limit" in result.message


def test_default_mem_limit(monkeypatch):
    monkeypatch.setenv(logging_ops.MEM_LIMIT_ENV, "12345")
    info = monitoring_pb2.MachineInfo.FromString(logging_ops.machine_info().numpy())
    assert info.mem_limit_bytes == 12345
    monkeypatch.setenv(logging_ops.MEM_LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match="MONOLITH_MACHINE_INFO_MEM_LIMIT must be an integer.*'lots'"):
        logging_ops.machine_info()
    monkeypatch.delenv(logging_ops.MEM_LIMIT_ENV)
    assert logging_ops.default_mem_limit() > logging_ops.process_rss_bytes()
    with pytest.raises(ValueError, match="mem_limit must be >= 0"):
        logging_ops.machine_info(-1)
