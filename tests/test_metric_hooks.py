"""Throughput, loss and custom-metric hooks (scraped over HTTP); FileMetricHook as in Monolith's test."""
import datetime
import json
import os
import random
import time

import numpy as np
import pytest

from services.metrics import start_metrics_server, stop_metrics_server
from tests.processes import wait_for
from tests.scrape import scrape
from worker.modeling.hooks.base import StepContext, StepResult
from worker.modeling.hooks.custom_metric import CustomMetricHook
from worker.modeling.hooks.file_metric import FileMetricHook
from worker.modeling.hooks.partitioned_file import WriteOnlyFileAndStat
from worker.modeling.hooks.step_loss import StepLossMetricHook
from worker.modeling.hooks.throughput import ThroughputMetricHook
from worker.modeling.hooks.vepfs import default_layout_fn, default_parse_fn, req_date, vepfs_key_fn, vepfs_layout_fn


@pytest.fixture(scope="module")
def metrics_port():
    port = start_metrics_server(0)
    yield port
    stop_metrics_server(port)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def run(hook, steps, clock=None, dt=0.0, loss=None, fetches=None, start_step=0):
    for s in range(start_step, start_step + steps):
        ctx = StepContext(global_step=s)
        hook.before_step(ctx)
        if clock is not None:
            clock.t += dt
        hook.after_step(ctx, StepResult(global_step=s + 1, loss=loss, fetches=fetches or {}))


def test_throughput_hook(metrics_port):
    clock = Clock(1000.0)
    hook = ThroughputMetricHook("hook_model", start_time_secs=990.0, cluster_type="stable", run_every_n_secs=30,
                                clock=clock)
    hook.begin()
    run(hook, 10, clock, dt=4.0)
    tags = {"model_name": "hook_model", "cluster_type": "stable"}
    s = scrape(metrics_port)
    assert s.value("monolith_training_run_start_elapsed_time_all_count", **tags) == 1
    assert s.value("monolith_training_run_start_elapsed_time_all_sum", **tags) == 10.0
    # emissions at t=1032 (8 steps, 4 s/step); the last 2 steps wait for the next interval
    assert s.value("monolith_training_run_steps_all_total", **tags) == 8
    assert s.value("monolith_training_run_steps_elapsed_time_all_count", **tags) == 1
    assert s.value("monolith_training_run_steps_elapsed_time_all_sum", **tags) == 4.0
    run(hook, 7, clock, dt=4.0, start_step=10)
    s = scrape(metrics_port)
    assert s.value("monolith_training_run_steps_all_total", **tags) == 16
    assert s.value("monolith_training_run_steps_elapsed_time_all_sum", **tags) == 8.0


def test_throughput_hook_survives_a_step_that_did_not_advance(metrics_port):
    clock = Clock(0.0)
    hook = ThroughputMetricHook("stalled_model", run_every_n_secs=0, clock=clock)
    hook.begin()
    ctx = StepContext(global_step=5)
    hook.before_step(ctx)
    clock.t = 3.0
    hook.after_step(ctx, StepResult(global_step=5))
    clock.t = 6.0
    hook.after_step(ctx, StepResult(global_step=8))
    tags = {"model_name": "stalled_model", "cluster_type": "stable"}
    s = scrape(metrics_port)
    assert s.value("monolith_training_run_steps_all_total", **tags) == 3
    assert s.value("monolith_training_run_steps_elapsed_time_all_sum", **tags) == 2.0
    assert s.value("monolith_training_run_start_elapsed_time_all_count", **tags) is None
    with pytest.raises(ValueError, match="run_every_n_secs"):
        ThroughputMetricHook("m", run_every_n_secs=-1)


def test_step_loss_hook(metrics_port):
    hook = StepLossMetricHook()
    hook.begin()
    assert hook.before_step(StepContext(0)) == []
    run(hook, 3, loss=np.float32(0.625))
    assert scrape(metrics_port).value("monolith_training_step_loss") == 0.625
    named = StepLossMetricHook(loss_name="total_loss")
    named.begin()
    assert named.before_step(StepContext(0)) == ["total_loss"]
    run(named, 1, fetches={"total_loss": np.float64(1.5)})
    assert scrape(metrics_port).value("monolith_training_step_loss") == 1.5


def test_custom_metric_hook_validation():
    import tensorflow as tf

    with pytest.raises(ValueError, match="at least one metric"):
        CustomMetricHook({})
    with pytest.raises(ValueError, match=r"'auc' must be a scalar \(rank 0\), got shape \(2,\)"):
        CustomMetricHook({"auc": tf.TensorSpec([2], tf.float32)})
    with pytest.raises(ValueError, match="'auc' must be a scalar"):
        CustomMetricHook({"auc": tf.TensorSpec(None, tf.float32)})
    with pytest.raises(ValueError, match="'auc' must be float32 or int32, got <dtype: 'float64'>"):
        CustomMetricHook({"auc": tf.TensorSpec([], tf.float64)})
    with pytest.raises(ValueError, match="'n' must be float32 or int32"):
        CustomMetricHook({"n": tf.constant(1, tf.int64)})
    with pytest.raises(ValueError, match="must be a tensor or TensorSpec, got float"):
        CustomMetricHook({"auc": 0.5})


def test_custom_metric_hook_emits(metrics_port):
    import tensorflow as tf

    hook = CustomMetricHook({"custom.auc": tf.TensorSpec([], tf.float32), "custom.pos": tf.constant(3)})
    hook.begin()
    assert hook.before_step(StepContext(0)) == ["custom.auc", "custom.pos"]
    run(hook, 1, fetches={"custom.auc": np.float32(0.75), "custom.pos": np.int32(12)})
    s = scrape(metrics_port)
    assert s.value("monolith_training_custom_auc") == 0.75
    assert s.value("monolith_training_custom_pos") == 12
    with pytest.raises(ValueError, match="'custom.auc' must be a scalar"):
        run(hook, 1, fetches={"custom.auc": np.zeros(2, np.float32), "custom.pos": np.int32(1)})
    with pytest.raises(KeyError, match="'custom.pos' was not fetched"):
        run(hook, 1, fetches={"custom.auc": np.float32(1)})


RECORD = {"model_name": "test_model", "req_time": "20220927", "uid": 1854,
          "predict": {"feed_comment": 0.5, "click_comment": 0.2, "feed_share": 0.2},
          "label": {"feed_comment": 0, "click_comment": 1, "feed_share": 0}}


def test_vepfs_key_fn():
    assert vepfs_key_fn(RECORD, 0, "/base") == "/base/test_model/20220927/worker_0"
    assert vepfs_key_fn({"__REQ_TIME__": "20220101", "req_time": "20230101"}, 3, "/b") == \
        "/b/model_name/20220101/worker_3"
    assert vepfs_key_fn({"model_name": "m", "req_time": 1_664_236_800}, 1, "/b") == "/b/m/20220927/worker_1"
    assert req_date(1_664_236_800_000) == "20220927"
    with pytest.raises(KeyError, match="no req_time"):
        vepfs_key_fn({"model_name": "m"}, 0, "/b")
    with pytest.raises(ValueError, match="neither YYYYMMDD"):
        req_date("2022-09-27")


def test_vepfs_layout_fn():
    assert vepfs_layout_fn(RECORD) == ('20220927;gid;1854;{"feed_comment": 0.5, "click_comment": 0.2, '
                                      '"feed_share": 0.2};{"feed_comment": 0, "click_comment": 1, "feed_share": 0}')
    assert vepfs_layout_fn({"__REQ_TIME__": 5, "__FEED_ID__": 9, "__UID__": 7, "userid": 8}) == "5;9;7;null;null"
    assert vepfs_layout_fn({"req_time": 5, "feedid": 4, "userid": 8}) == "5;4;8;null;null"


def test_default_parse_and_layout():
    assert default_parse_fn(b'{"a": 1}') == {"a": 1} == default_parse_fn('{"a": 1}')
    assert default_parse_fn({"a": 1}) == {"a": 1}
    assert default_layout_fn("line") == "line"
    assert default_layout_fn({"a": 1}) == '{"a": 1}'
    assert default_layout_fn({1, 2}) == "{1, 2}"


def test_file_metric_hook_partitions_days_like_the_seed(tmp_path):
    base = str(tmp_path / "file_metric_hook")
    hook = FileMetricHook(worker_id=0, key_fn=vepfs_key_fn, layout_fn=vepfs_layout_fn, base_name=base,
                          batch_size=8, partition_size=32)
    hook.begin()
    rng = random.Random(0)
    today = datetime.date(2026, 11, 28)
    days = [(today - datetime.timedelta(days=i)).strftime("%Y%m%d") for i in range(8)]
    expected: dict[str, list[str]] = {d: [] for d in days}
    step = 0
    for day in days:
        for _ in range(64):
            rv = dict(RECORD, req_time=day, uid=rng.randrange(10**6),
                      predict={k: round(rng.random(), 3) for k in RECORD["predict"]},
                      label={k: rng.randrange(2) for k in RECORD["label"]})
            expected[day].append(vepfs_layout_fn(rv))
            ctx = StepContext(step)
            assert hook.before_step(ctx) == ["deep_insight_op"]
            hook.after_step(ctx, StepResult(step + 1, fetches={"deep_insight_op": [json.dumps(rv)]}))
            step += 1
    hook.after_step(StepContext(step), StepResult(step + 1, fetches={"deep_insight_op": np.array([b"", b""])}))
    hook.end()
    for day in days:
        folder = os.path.join(base, "test_model", day, "worker_0")
        assert sorted(os.listdir(folder)) == ["part_000000.txt", "part_000001.txt"]
        lines = []
        for name in ("part_000000.txt", "part_000001.txt"):
            with open(os.path.join(folder, name)) as fh:
                part = fh.read().splitlines()
            assert len(part) == 32
            lines += part
        assert lines == expected[day]
    assert hook.dropped == 0


def test_file_metric_hook_drops_bad_messages_and_keeps_going(tmp_path):
    hook = FileMetricHook(base_name=str(tmp_path), batch_size=2, partition_size=100)
    good = json.dumps({"model_name": "m", "req_time": 1_664_236_800, "uid": 1})
    hook.put(["not json", good, json.dumps({"model_name": "m"}), good])
    hook.end()
    with open(tmp_path / "m" / "20220927" / "worker_0" / "part_000000.txt") as fh:
        assert fh.read().splitlines() == [good, good]
    assert hook.dropped == 2
    with pytest.raises(ValueError, match="partition_size must be >= 1"):
        FileMetricHook(partition_size=0)
    with pytest.raises(ValueError, match="key_fn"):
        FileMetricHook(key_fn=None)


def test_partitioned_file_rolls_exactly_and_never_overwrites(tmp_path):
    key = str(tmp_path / "k")
    sink = WriteOnlyFileAndStat(key, partition_size=5, batch_size=7, file_ext="log")
    for i in range(12):
        sink.write(f"line{i}")
    sink.close()
    parts = sorted(os.listdir(key))
    assert parts == ["part_000000.log", "part_000001.log", "part_000002.log"]
    sizes = [len((tmp_path / "k" / p).read_text().splitlines()) for p in parts]
    assert sizes == [5, 5, 2]
    again = WriteOnlyFileAndStat(key, partition_size=5, batch_size=7, file_ext="log")
    again.write("after restart")
    again.close()
    assert (tmp_path / "k" / "part_000003.log").read_text() == "after restart\n"
    assert again.is_available()
    stale = WriteOnlyFileAndStat(key, clock=lambda: 0.0)
    stale._clock = lambda: 24 * 3600.0
    assert not stale.is_available()


def test_idle_files_are_closed_and_flushed(tmp_path, monkeypatch):
    from worker.modeling.hooks import file_metric

    monkeypatch.setattr(file_metric, "CLEANUP_SECS", 0)
    hook = FileMetricHook(base_name=str(tmp_path), batch_size=100)
    msg = json.dumps({"model_name": "idle", "req_time": "20260101", "uid": 5})
    hook.put(msg)
    key = str(tmp_path / "idle" / "20260101" / "worker_0")
    sink = wait_for(lambda: hook.files.get(key), timeout=10, what="the file sink")
    assert not (tmp_path / "idle" / "20260101" / "worker_0" / "part_000000.txt").exists()
    sink._clock = lambda: time.time() + 25 * 3600
    wait_for(lambda: key not in hook.files, timeout=10, what="the idle file to be closed")
    assert (tmp_path / "idle" / "20260101" / "worker_0" / "part_000000.txt").read_text() == msg + "\n"
    hook.end()
