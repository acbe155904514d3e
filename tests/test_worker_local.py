"""Local mode (in-process store): train / evaluate / predict, checkpoints and exact resume."""
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.tiny_models import FEATURES, VOCAB, TinyDNN
from worker.model import Estimator, RunConfig, SgdOptimizer
from worker.models.ffm import NUM_EXAMPLES, NUM_SLOTS, TestFFMModel, generate_ffm_examples
from worker.runtime.backends import list_checkpoints

pytestmark = pytest.mark.slow  # trains models end to end: left out of `make test-fast`


def test_ffm_trains_evaluates_and_predicts(tmp_path):
    model = TestFFMModel()
    model.output_path = str(tmp_path / "pred")
    model.output_fields = "label"
    est = Estimator(model, RunConfig(model_dir=str(tmp_path / "m"), log_step_count_steps=1000))
    stats = est.train(40)
    assert stats["global_step"] == 40 and stats["examples"] == 40 * NUM_EXAMPLES
    metrics = est.evaluate()
    assert metrics["examples"] == NUM_EXAMPLES and metrics["ctr_auc"] > 0.95
    assert metrics["loss"] < NUM_EXAMPLES * np.log(2) / 2
    assert est.table_sizes() == {f"slot_{i}": 5 for i in range(NUM_SLOTS)}
    # bias + 1 FFM vector per pair the slot takes part in
    dims = {n: s.dim for n, s in model.ctx.feature_factory.slots.items()}
    assert dims == {"slot_0": 5, "slot_1": 5, "slot_2": 5, "slot_3": 4, "slot_4": 4, "slot_5": 4}
    preds = list(est.predict())
    assert len(preds) == NUM_EXAMPLES and set(preds[0]) == {"ctr"}
    lines = (tmp_path / "pred" / "part-00000").read_text().splitlines()
    assert len(lines) == NUM_EXAMPLES
    labels = generate_ffm_examples()["label"]
    for line, p, lb in zip(lines, preds, labels):
        label_text, pred_text = line.split("\t")
        assert float(label_text) == lb and float(pred_text) == pytest.approx(float(p["ctr"]), rel=1e-6)


def _run(model_dir, steps, save_every=None, keep=5):
    model = TinyDNN(SgdOptimizer(0.3))
    est = Estimator(model, RunConfig(model_dir=model_dir, save_checkpoints_steps=save_every, keep_checkpoint_max=keep,
                                     log_step_count_steps=1000))
    est.train(steps)
    tables = est.backend.lookup({f: np.arange(VOCAB, dtype=np.int64) for f in FEATURES})
    return est, tables, [v.numpy() for v in est.dense_variables()]


def test_checkpoint_every_n_keep_k_and_exact_resume(tmp_path):
    _, ref_tables, ref_dense = _run(str(tmp_path / "straight"), 12)
    resumed_dir = str(tmp_path / "resumed")
    _run(resumed_dir, 8, save_every=4, keep=2)
    assert list_checkpoints(resumed_dir) == [4, 8]
    _run(resumed_dir, 6)  # already past 6: restores step 8 and does nothing
    est, tables, dense = _run(resumed_dir, 12, save_every=4, keep=2)
    assert est.backend.global_step() == 12 and list_checkpoints(resumed_dir) == [8, 12]
    assert not [n for n in os.listdir(resumed_dir) if n.startswith(".")]  # no half-written checkpoint left
    for f in FEATURES:
        np.testing.assert_array_equal(tables[f], ref_tables[f])
    for a, b in zip(dense, ref_dense):
        np.testing.assert_array_equal(a, b)


def test_finite_input_stops_training_and_bad_arguments(tmp_path):
    model = TinyDNN(SgdOptimizer(0.1), repeat=False)
    est = Estimator(model, RunConfig(model_dir=str(tmp_path)))
    stats = est.train(1000)
    assert stats["global_step"] == 30  # NUM_BATCHES of data, then the input is exhausted
    with pytest.raises(ValueError, match="max_steps"):
        est.train(-1)
    for kwargs, field in [({"num_workers": 0}, "num_workers"), ({"worker_index": 2, "num_workers": 2}, "worker_index"),
                          ({"staleness": -1}, "staleness"), ({"ps_addresses": []}, "ps_addresses"),
                          ({"ps_addresses": ["nohost"]}, "ps_addresses"), ({"dispatcher": "localhost:1"}, "dispatcher"),
                          ({"save_checkpoints_steps": 0}, "save_checkpoints_steps"),
                          ({"keep_checkpoint_max": 0}, "keep_checkpoint_max")]:
        with pytest.raises(ValueError, match=field):
            RunConfig(model_dir=str(tmp_path), **kwargs)
    with pytest.raises(ValueError, match="model_dir"):
        RunConfig(model_dir="")


def test_input_errors_name_the_feature(tmp_path):
    class DenseIds(TinyDNN):
        def input_fn(self, mode):
            return tf.data.Dataset.from_tensors({"f0": tf.constant([[1, 2]], tf.int64), "label": tf.constant([1.0])})

    with pytest.raises(ValueError, match="'f0' is not a ragged int64"):
        Estimator(DenseIds(SgdOptimizer(0.1)), RunConfig(model_dir=str(tmp_path))).train(1)

    class FloatRagged(TinyDNN):
        def input_fn(self, mode):
            return tf.data.Dataset.from_tensors({"f0": tf.ragged.constant([[1.0]]), "label": tf.constant([1.0])})

    with pytest.raises(ValueError, match="'f0' must be a ragged int64"):
        Estimator(FloatRagged(SgdOptimizer(0.1)), RunConfig(model_dir=str(tmp_path))).train(1)

    class NotDict(TinyDNN):
        def input_fn(self, mode):
            return tf.data.Dataset.from_tensors(tf.constant([1.0]))

    with pytest.raises(ValueError, match="dicts of features"):
        Estimator(NotDict(SgdOptimizer(0.1)), RunConfig(model_dir=str(tmp_path))).train(1)


def test_hooks_protocol_and_unknown_fetch(tmp_path):
    calls = []

    class Hook:
        def begin(self): calls.append("begin")
        def before_step(self, ctx): return ["ctr", "label:ctr"]
        def after_step(self, ctx, result):
            calls.append((ctx.global_step, result.global_step, result.fetches["ctr"].shape, result.batch_size))
        def end(self): calls.append("end")

    est = Estimator(TinyDNN(SgdOptimizer(0.1)), RunConfig(model_dir=str(tmp_path)), hooks=[Hook()])
    est.train(3)
    assert calls[0] == "begin" and calls[-1] == "end"
    assert calls[1:-1] == [(i, i + 1, (32,), 32) for i in range(3)]

    class Bad:
        def begin(self): pass
        def before_step(self, ctx): return ["nope"]
        def after_step(self, ctx, result): pass
        def end(self): calls.append("bad-end")

    est.hooks = [Bad()]
    with pytest.raises(KeyError, match="nope"):
        est.train(5)
    assert calls[-1] == "bad-end"


def test_learning_rate_function_per_slice_matches_tf_schedule(tmp_path):
    from worker.modeling.estimator_spec import EstimatorSpec
    from worker.modeling.learning_rate_functions import PolynomialDecay
    from worker.modeling.native_model import MonolithModel
    from worker.modeling.segment_configs import ZerosInitializer

    class LinearModel(MonolithModel):
        def input_fn(self, mode):
            return tf.data.Dataset.from_tensors({"x": tf.ragged.constant([[1], [1, 2]], tf.int64),
                                                 "label": tf.constant([0.0, 1.0])}).repeat()

        def model_fn(self, features, mode):
            self.create_embedding_feature_column("x")
            (a,) = self.lookup_embedding_slice([("x", 2)], "a", initializer=ZerosInitializer(),
                                               optimizer=SgdOptimizer(9.0),
                                               learning_rate_fn=PolynomialDecay(0.5, 4, end_learning_rate=0.1))
            (b,) = self.lookup_embedding_slice(["x"], "b", slice_dim=1, initializer=ZerosInitializer(),
                                               optimizer=SgdOptimizer(0.25))
            loss = tf.reduce_sum(a) + tf.reduce_sum(b)
            return EstimatorSpec(label=features["label"], pred=tf.reduce_sum(a, 1), loss=loss,
                                 optimizer=tf.keras.optimizers.SGD(0.1))

    est = Estimator(LinearModel(), RunConfig(model_dir=str(tmp_path)))
    est.train(6)
    schedule = tf.keras.optimizers.schedules.PolynomialDecay(0.5, 4, end_learning_rate=0.1)
    lr_sum = sum(float(schedule(s)) for s in range(6))
    rows = est.backend.lookup({"x": np.array([1, 2], np.int64)})["x"]
    counts = np.array([2.0, 1.0])  # occurrences per batch: each adds 1 to d(loss)/d(row)
    np.testing.assert_allclose(rows[:, :2], -np.outer(counts, [lr_sum, lr_sum]), rtol=1e-6)
    np.testing.assert_allclose(rows[:, 2], -counts * 0.25 * 6, rtol=1e-6)  # the other slice keeps its own rate


def test_train_cli_local_mode_metrics_endpoint_and_summary(tmp_path):
    import json

    from launch.cli import main
    from services.metrics import stop_metrics_server
    from services.ports import free_port
    from tests.scrape import scrape

    port = free_port()
    summary = tmp_path / "summary.json"
    code = main(["train", "--model", "worker.models.ffm:TestFFMModel", "--model-dir", str(tmp_path / "m"),
                 "--max-steps", "12", "--eval", "--summary-file", str(summary), "--metrics-port", str(port),
                 "--save-checkpoints-steps", "6", "--progress"])
    try:
        assert code == 0
        result = json.loads(summary.read_text())
        assert result["mode"] == "local" and result["global_step"] == 12 and result["steps"] == 12
        assert result["examples"] == 12 * NUM_EXAMPLES and result["examples_per_sec"] > 0
        assert 0.5 < result["auc"]["ctr"] <= 1.0 and result["checkpoint"].endswith("ckpt-12")
        assert result["table_sizes"] == {f"slot_{i}": 5 for i in range(NUM_SLOTS)}
        loss = scrape(port).value("monolith_training_step_loss")
        assert loss == pytest.approx(result["loss"], rel=1e-6)
    finally:
        stop_metrics_server(port)


def test_two_heads_auc_and_mse_over_the_whole_eval_set_and_occurrence_threshold(tmp_path):
    from tests.tiny_models import TwoHeadModel, make_batches
    from worker.runtime.evaluation import mse

    model = TwoHeadModel(SgdOptimizer(0.2))
    est = Estimator(model, RunConfig(model_dir=str(tmp_path)))
    est.train(1)
    batches = make_batches()
    # threshold 2: an id gets a row on its 3rd occurrence (counted per step in which it appears)
    assert est.table_sizes()["f0"] == 0 and est.table_sizes()["f1"] > 0
    est.train(3)
    assert 0 < est.table_sizes()["f0"] < VOCAB
    metrics = est.evaluate()
    preds = list(est.predict())
    labels = np.concatenate([b["label"] for b in batches])
    ctr = np.array([p["ctr"] for p in preds])
    score = np.array([p["score"] for p in preds])
    pos, neg = ctr[labels == 1], ctr[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    pairwise = wins / (pos.size * neg.size)
    assert metrics["ctr_auc"] == pytest.approx(pairwise, abs=1e-9)
    assert metrics["score_mse"] == pytest.approx(float(np.mean((score - labels) ** 2)), rel=1e-6)
    assert metrics["score_mse"] == pytest.approx(mse(labels, score), rel=1e-9)


def test_ffm_examples_parse_to_the_generated_ragged_ids():
    from worker.models.ffm import make_examples, parse_examples

    data = generate_ffm_examples()
    model = TestFFMModel()
    specs, parse = model.create_serving_input_receiver_fn()()
    assert specs["instances"].dtype == tf.string
    parsed = parse({"instances": tf.constant(make_examples(data)[:5])})
    for i in range(NUM_SLOTS):
        assert parsed[f"slot_{i}"].to_list() == data[f"slot_{i}"][:5]
    np.testing.assert_array_equal(parsed["label"].numpy(), data["label"][:5])
    assert parse_examples(tf.constant(make_examples(data))).keys() == parsed.keys()


def test_checkpoint_every_n_seconds(tmp_path):
    est = Estimator(TinyDNN(), RunConfig(model_dir=str(tmp_path), save_checkpoints_secs=1e-6, keep_checkpoint_max=10))
    est.train(3)
    assert list_checkpoints(str(tmp_path)) == [1, 2, 3]
    assert est.last_checkpoint == os.path.join(str(tmp_path), "ckpt-3")


class _BatchSizeProbe(TinyDNN):
    """Train batch 4, eval batch 8; records `self.batch_size` as each mode's input_fn sees it."""

    def __init__(self):
        super().__init__()
        self.p.train.per_replica_batch_size = 4
        self.p.eval.per_replica_batch_size = 8
        self.seen = {}

    def input_fn(self, mode):
        self.seen[mode] = self.batch_size
        return super().input_fn(mode).unbatch().batch(self.batch_size)


def test_input_fn_sees_each_modes_batch_size(tmp_path):
    model = _BatchSizeProbe()
    est = Estimator(model, RunConfig(model_dir=str(tmp_path)))
    est.train(2)
    metrics = est.evaluate(steps=3)
    assert model.seen == {"train": 4, "eval": 8}
    assert metrics["examples"] == 3 * 8
    assert model.p.mode == "train" and model.batch_size == 4  # restored after each call



class _NoDenseOptimizer(TinyDNN):
    def model_fn(self, features, mode):
        spec = super().model_fn(features, mode)
        spec.optimizer = None
        return spec


def test_a_missing_dense_optimizer_is_a_clear_error_only_when_there_are_dense_variables(tmp_path):
    est = Estimator(_NoDenseOptimizer(), RunConfig(model_dir=str(tmp_path / "dnn")))
    with pytest.raises(ValueError, match=r"EstimatorSpec has no optimizer, but the model has 4 dense variables"):
        est.train(1)

    class NoDenseAtAll(TestFFMModel):  # embeddings only: nothing needs a dense optimizer
        def model_fn(self, features, mode):
            spec = super().model_fn(features, mode)
            spec.optimizer = None
            return spec

    assert Estimator(NoDenseAtAll(), RunConfig(model_dir=str(tmp_path / "ffm"))).train(2)["global_step"] == 2


def test_evaluation_writes_tensorboard_scalars_under_model_dir_eval(tmp_path):
    est = Estimator(TinyDNN(), RunConfig(model_dir=str(tmp_path)))
    est.train(5)
    metrics = est.evaluate(steps=4)
    events = list((tmp_path / "eval").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = {}
    for event in tf.compat.v1.train.summary_iterator(str(events[0])):
        for value in event.summary.value:
            scalars[value.tag] = (event.step, float(tf.make_ndarray(value.tensor)))
    assert scalars["ctr_auc"] == (5, pytest.approx(metrics["ctr_auc"], rel=1e-6))
    assert scalars["loss"] == (5, pytest.approx(metrics["loss"], rel=1e-6))
