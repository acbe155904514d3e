"""The step-time breakdown: per-phase sums, their export to Prometheus and TensorBoard, and the packed step
inputs (one rows, layout and index tensor per step) that the traced step unpacks."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from prometheus_client import REGISTRY

from services.metrics import MetricClient
from tests.tiny_models import TinyDNN
from worker.modeling.segment_configs import SgdOptimizer
from worker.runtime.batch_prep import BatchPreparer, unpack_step_inputs
from worker.runtime.estimator import Estimator
from worker.runtime.run_config import RunConfig
from worker.runtime.step_timing import PHASES, StepTimeExporter, StepTimes


def _scalars(directory) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    return out


def test_exporter_writes_ms_per_step_since_its_last_call(tmp_path):
    times = StepTimes()
    times.seconds["compute"], times.seconds["input"], times.steps, times.total = 0.030, 0.010, 10, 0.050
    exporter = StepTimeExporter(MetricClient("test.step_timing"), str(tmp_path), {"worker": "0"})
    first = exporter.export(times, global_step=10)
    assert first == pytest.approx({**dict.fromkeys(PHASES, 0.0), "compute": 3.0, "input": 1.0, "step": 5.0})
    times.seconds["compute"] += 0.010  # 10 more steps, 1 ms of compute each
    times.steps, times.total = 20, 0.070
    second = exporter.export(times, global_step=20)
    assert second == pytest.approx({**dict.fromkeys(PHASES, 0.0), "compute": 1.0, "step": 2.0})
    assert exporter.export(times, global_step=20) == {}  # no step since: nothing exported
    exporter.close()
    gauge = "test_step_timing_step_phase_ms"
    assert REGISTRY.get_sample_value(gauge, {"worker": "0", "phase": "compute"}) == pytest.approx(1.0)
    assert REGISTRY.get_sample_value(gauge, {"worker": "0", "phase": "step"}) == pytest.approx(2.0)
    scalars = _scalars(tmp_path)
    assert scalars["step_time/compute_ms"] == [(10, pytest.approx(3.0)), (20, pytest.approx(1.0))]
    assert scalars["step_time/step_ms"] == [(10, pytest.approx(5.0)), (20, pytest.approx(2.0))]


def test_training_reports_the_breakdown_and_exports_it(tmp_path):
    est = Estimator(TinyDNN(SgdOptimizer(0.1)), RunConfig(model_dir=str(tmp_path), export_step_times=True,
                                                          log_step_count_steps=5))
    stats = est.train(12)
    est.close()
    ms = stats["step_ms"]  # after the first step
    assert set(ms) == {*PHASES, "step"} and ms["compute"] > 0 and ms["input"] > 0 and ms["gradient_push"] > 0
    assert sum(ms[p] for p in ("lookup_wait", "compute", "gradient_push", "push_wait", "hooks")) <= ms["step"] * 1.01
    assert stats["steady_examples_per_sec"] > 0
    scalars = _scalars(tmp_path / "train")
    assert [step for step, _ in scalars["step_time/compute_ms"]] == [5, 10, 12]
    assert REGISTRY.get_sample_value("monolith_training_step_phase_ms", {"worker": "0", "phase": "compute"}) > 0


def test_packed_step_inputs_unpack_to_each_features_rows_and_index():
    feats = {"a": tf.ragged.constant([[1, 2, 2], [3]], tf.int64), "b": tf.ragged.constant([[2], [4, 4, 1]], tf.int64),
             "unused": tf.ragged.constant([[5], [6]], tf.int64)}
    prep = BatchPreparer(["a", "b", "unused"], {"a": "t", "b": "u"})
    batch = prep.dedupe(feats)
    prep.assemble(batch, {"t": np.arange(6, dtype=np.float32).reshape(3, 2),
                          "u": np.arange(9, dtype=np.float32).reshape(3, 3) + 100})
    rows, layout, index = prep.step_inputs(batch)
    assert layout.tolist() == [[3, 2, 4], [3, 3, 4], [0, 0, 0]] and rows.dtype == np.float32
    got_rows, got_index = unpack_step_inputs(["a", "b", "unused"], tf.constant(rows), tf.constant(layout),
                                             tf.constant(index))
    for f in ("a", "b"):
        np.testing.assert_array_equal(got_rows[f].numpy(), batch.rows[f])
        np.testing.assert_array_equal(got_index[f].numpy(), batch.index[f])
    assert got_rows["unused"].shape == (0, 0) and got_index["unused"].shape == (0,)
    grads = prep.unpack_gradients(layout, rows * 2)  # a packed gradient splits back into each feature's block
    assert set(grads) == {"a", "b"}
    np.testing.assert_array_equal(grads["b"], batch.rows["b"] * 2)
