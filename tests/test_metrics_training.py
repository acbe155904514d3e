"""The metric hooks inside the real worker loop: deep insight from a model's tf.function to files, custom
metrics and the loss to /metrics."""
import json

import numpy as np
import pytest
import tensorflow as tf

from services.metrics import start_metrics_server, stop_metrics_server
from tests.scrape import scrape
from tests.tiny_models import BATCH, FEATURES, NUM_BATCHES, TinyDNN, batch_tensors, make_batches
from worker.model import Estimator, RunConfig
from worker.modeling.deep_insight import hit_sample_ratio, write_deep_insight_tf
from worker.modeling.estimator_spec import ModeKeys
from worker.modeling.hooks.custom_metric import CustomMetricHook
from worker.modeling.hooks.file_metric import FileMetricHook
from worker.modeling.hooks.step_loss import StepLossMetricHook
from worker.modeling.hooks.vepfs import vepfs_key_fn

pytestmark = pytest.mark.slow

REQ_TIME = 1_764_288_000  # 2025-11-28 00:00 UTC
RATIO = 0.5


class DeepInsightDNN(TinyDNN):
    """TinyDNN whose examples carry uid/req_time/sample_rate and whose model_fn writes deep insight."""

    def input_fn(self, mode):
        batches = make_batches()
        n = BATCH * NUM_BATCHES
        tensors = batch_tensors({k: [row for b in batches for row in b[k]] if k != "label"
                                 else np.concatenate([b["label"] for b in batches]) for k in (*FEATURES, "label")})
        tensors.update(uid=tf.range(1000, 1000 + n, dtype=tf.int64), sample_rate=tf.ones([n]),
                       req_time=tf.fill([n], tf.constant(REQ_TIME, tf.int64)))
        return tf.data.Dataset.from_tensor_slices(tensors).batch(BATCH)

    def model_fn(self, features, mode):
        spec = super().model_fn(features, mode)
        if mode != ModeKeys.PREDICT:
            msgs = write_deep_insight_tf(features, RATIO, "di_model", labels=spec.label, preds=spec.pred,
                                         target="ctr", enable_kafka_metrics=True)
            self.add_extra_output("deep_insight_op", msgs)
            self.add_extra_output("batch_pos", tf.reduce_sum(tf.cast(spec.label, tf.int32)))
        return spec


def test_hooks_in_the_training_loop(tmp_path):
    port = start_metrics_server(0)
    model = DeepInsightDNN()
    file_hook = FileMetricHook(worker_id=3, key_fn=vepfs_key_fn, base_name=str(tmp_path / "di"), batch_size=16,
                               partition_size=100)
    model.add_training_hook(file_hook)
    hooks = [StepLossMetricHook(), CustomMetricHook({"batch_pos": tf.TensorSpec([], tf.int32)})]
    est = Estimator(model, RunConfig(model_dir=str(tmp_path / "m"), log_step_count_steps=1000), hooks=hooks)
    try:
        stats = est.train(NUM_BATCHES)
        s = scrape(port)
    finally:
        stop_metrics_server(port)
    assert stats["global_step"] == NUM_BATCHES
    last_labels = make_batches()[-1]["label"]
    assert s.value("monolith_training_batch_pos") == last_labels.sum()
    assert s.value("monolith_training_step_loss") == pytest.approx(stats["loss"], rel=1e-6)

    folder = tmp_path / "di" / "di_model" / "20251128" / "worker_3"
    lines = [ln for p in sorted(folder.iterdir()) for ln in p.read_text().splitlines()]
    records = [json.loads(ln) for ln in lines]
    uids = np.arange(1000, 1000 + BATCH * NUM_BATCHES)
    assert [r["uid"] for r in records] == uids[hit_sample_ratio(uids, RATIO)].tolist()
    labels = np.concatenate([b["label"] for b in make_batches()])
    assert all(r["label"]["ctr"] == labels[r["uid"] - 1000] for r in records)
    assert all(0 < r["predict"]["ctr"] < 1 and r["req_time"] == REQ_TIME for r in records)
    assert max(len(p.read_text().splitlines()) for p in folder.iterdir()) == 100
    assert file_hook.dropped == 0
