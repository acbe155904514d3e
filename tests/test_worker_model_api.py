"""The model surface of Monolith: params, contexts, heads, slices, layouts and their error paths."""
import math

import numpy as np
import pytest
import tensorflow as tf

from worker.modeling import task_context as native_task_context
from worker.modeling.estimator_spec import EstimatorSpec, ModeKeys
from worker.modeling.feature import FeatureFactory, FeatureSlotConfig
from worker.modeling.heads import get_sigmoid_loss_and_pred, get_softmax_loss_and_pred
from worker.modeling.lookup_inputs import LookupInputs, lookup_inputs
from worker.modeling.native_model import MonolithModel
from worker.modeling.native_task import AsyncFunctionManager, NativeContext, NativeTask
from worker.modeling.params import Params
from worker.runtime.evaluation import auc, mse


class _Model(MonolithModel):
    def input_fn(self, mode):
        raise NotImplementedError

    def model_fn(self, features, mode):
        raise NotImplementedError


def _inputs(features: dict[str, list[list[int]]], dim: int = 16) -> LookupInputs:
    """Rows = id * 0.1 + column offset, so the expected pooled values are computable by hand."""
    rows, index, splits = {}, {}, {}
    for name, lists in features.items():
        values = np.array([v for row in lists for v in row], np.int64)
        uniq, inv = np.unique(values, return_inverse=True)
        rows[name] = tf.constant(uniq[:, None] * 0.1 + np.arange(dim)[None, :] * 0.01, tf.float32)
        index[name] = tf.constant(inv, tf.int32)
        splits[name] = tf.constant(np.cumsum([0] + [len(r) for r in lists]), tf.int64)
    return LookupInputs(rows, index, splits)


def test_native_task_params_defaults():
    p = _Model.params()
    assert p.metrics.enable_deep_insight is False and p.metrics.deep_insight_target == "ctr_head"
    assert p.metrics.deep_insight_sample_ratio == 0.01 and p.metrics.enable_throughput_hook is True
    assert p.metrics.file_base_name == "/vepfs/jaguar_deepinsight_results" and p.metrics.file_ext == "txt"
    assert p.train.max_pending_seconds_for_barrier == 30 and p.train.slow_start_steps == 0
    assert p.train.sample_bias == 0.0 and p.train.use_gpu_emb_table is False
    assert p.serving.export_dir_base == "exported_models" and p.serving.shared_embedding is True
    assert p.mode == ModeKeys.TRAIN
    assert p.clip_norm == 1000.0 and p.delimiter == "\t" and p.output_path is None
    assert p.default_occurrence_threshold == 0 and p.has("feature_list")
    with pytest.raises(AttributeError, match="clipnorm"):
        p.clipnorm = 3
    with pytest.raises(AttributeError, match="already defined"):
        p.define("clip_norm", 1.0)


def test_batch_size_get_set_rule_and_param_attributes():
    m = _Model()
    m.p.train.per_replica_batch_size, m.p.eval.per_replica_batch_size = 16, 4
    assert m.batch_size == 16
    m.p.mode = ModeKeys.EVAL
    assert m.batch_size == 4
    m.batch_size = 7
    assert m.p.train.per_replica_batch_size == 7 and m.p.eval.per_replica_batch_size == 7
    m.clip_norm = 5.0
    assert m.p.clip_norm == 5.0 and m.clip_norm == 5.0
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = m.no_such_thing


def test_native_context_factories_are_mutually_exclusive():
    with pytest.raises(ValueError, match="Cannot set feature_factory and layout_factory in the same time"):
        NativeContext(feature_factory=FeatureFactory(), layout_factory=object())
    ctx = NativeContext(feature_factory=FeatureFactory())
    slot = ctx.create_feature_slot(FeatureSlotConfig(name="a"))
    assert slot.name == "a" and ctx.create_feature_slot(FeatureSlotConfig(name="a")) is slot
    with pytest.raises(ValueError, match="neither"):
        NativeContext().create_feature_slot(FeatureSlotConfig(name="a"))
    with pytest.raises(ValueError, match="async_function_mgr"):
        ctx.add_async_function(print)
    mgr = AsyncFunctionManager()
    ctx = NativeContext(async_function_mgr=mgr)
    assert ctx.add_async_function(lambda a, b: a + b, args=(1,), kwargs={"b": 2}, is_async=False) == 3
    assert ctx.add_async_function(lambda: 5).result(timeout=5) == 5
    mgr.close()


def test_native_task_context_with_ctx_and_outermost_exit_keeps_context():
    native_task_context._CTX = None
    default = native_task_context.get()
    assert (default.num_ps, default.ps_index, default.num_workers, default.worker_index) == (0, 0, 1, 0)
    assert default.model_name == "" and default.sync_backend is None and default.server_type == ""
    a = native_task_context.NativeTaskContext(2, 0, 3, 1, "m", None, "worker")
    b = a._replace(worker_index=2)
    with native_task_context.with_ctx(a):
        assert native_task_context.get() is a
        with native_task_context.with_ctx(b):
            assert native_task_context.get() is b
        assert native_task_context.get() is a
    assert native_task_context.get() is a  # outermost exit keeps the context
    native_task_context._CTX = None


def test_sigmoid_loss_sample_rate_correction_weights_mask_and_clip():
    logits = np.array([0.5, -1.0, 2.0, 0.1], np.float32)
    label = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    rate = np.array([0.5, 1.0, 0.25, 0.8], np.float32)
    weight = np.array([1.0, 2.0, 0.5, 3.0], np.float32)
    mask = np.array([True, True, False, True])
    loss, pred = get_sigmoid_loss_and_pred("h", logits, label, batch_size=99, sample_rate=rate,
                                           instance_weight=weight, mask=mask)
    z = logits.astype(np.float64) - np.log(rate)
    ce = np.maximum(z, 0) - z * label + np.log1p(np.exp(-np.abs(z)))
    assert float(loss) == pytest.approx(float(np.sum((ce * weight)[mask])), rel=1e-5)
    np.testing.assert_allclose(pred, 1 / (1 + np.exp(-logits)), rtol=1e-6)  # predict before correction
    _, pred_after = get_sigmoid_loss_and_pred("h", logits, label, 4, sample_rate=rate, predict_before_correction=False)
    np.testing.assert_allclose(pred_after, 1 / (1 + np.exp(-z)), rtol=1e-5)
    p = 0.2
    loss_c, _ = get_sigmoid_loss_and_pred("h", logits * 10, label, 4, sample_rate=None, logit_clip_threshold=p)
    t = math.log((1 - p) / p)
    zc = np.clip(logits.astype(np.float64) * 10, -t, t)
    ce_c = np.maximum(zc, 0) - zc * label + np.log1p(np.exp(-np.abs(zc)))
    assert float(loss_c) == pytest.approx(float(ce_c.sum()), rel=1e-5)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="logit_clip_threshold"):
            get_sigmoid_loss_and_pred("h", logits, label, 4, logit_clip_threshold=bad)
    loss_p, pred_p = get_sigmoid_loss_and_pred("h", logits, None, 4, sample_rate=rate, mode=ModeKeys.PREDICT)
    assert loss_p is None
    np.testing.assert_allclose(pred_p, 1 / (1 + np.exp(-logits)), rtol=1e-6)


def test_softmax_loss_and_pred():
    logits = np.array([[1.0, 3.0, 0.0], [2.0, -1.0, 0.5]], np.float32)
    label = np.array([[0, 1, 0], [0, 0, 1]], np.float32)
    loss, pred = get_softmax_loss_and_pred("s", logits, label, ModeKeys.TRAIN)
    np.testing.assert_array_equal(pred, [1, 0])
    lse = np.log(np.exp(logits.astype(np.float64)).sum(1))
    np.testing.assert_allclose(loss, lse - (logits * label).sum(1), rtol=1e-5)
    assert get_softmax_loss_and_pred("s", logits, label, ModeKeys.PREDICT)[0] is None


def test_get_real_mode():
    m = _Model()
    assert m._get_real_mode(ModeKeys.PREDICT) == ModeKeys.PREDICT
    m.p.mode = ModeKeys.EVAL
    assert m._get_real_mode(ModeKeys.TRAIN) == ModeKeys.EVAL
    with pytest.raises(ValueError, match="model error!"):
        m._get_real_mode(ModeKeys.EVAL)


def test_lookup_embedding_slice_input_forms_and_out_types():
    m = _Model()
    feats = {"a": [[1, 2], [3]], "b": [[4], [5, 5]], "c": [[6], []]}
    for f in feats:
        m.create_embedding_feature_column(f)
    with lookup_inputs(_inputs(feats)):
        pooled = {f: np.array([[sum(i * 0.1 for i in row)] * 1 for row in feats[f]]) for f in feats}
        d = m.lookup_embedding_slice({"a": 2, "b": 3}, "s1")
        assert [e.shape[1] for e in d] == [2, 3]
        np.testing.assert_allclose(d[0][:, 0:1], pooled["a"], rtol=1e-5)
        lst = m.lookup_embedding_slice(["a", "c"], "s2", slice_dim=2, out_type="concat")
        assert lst.shape[1] == 4
        stk = m.lookup_embedding_slice(["a", "c"], "s2", slice_dim=2, out_type="stack")
        assert tuple(stk.shape[1:]) == (2, 2)
        addn = m.lookup_embedding_slice(["a", "c"], "s2", slice_dim=2, out_type="add_n")
        np.testing.assert_allclose(addn, stk.numpy().sum(axis=1), rtol=1e-6)
        groups = m.lookup_embedding_slice([["a", "b"], ["c"]], "s3", slice_dim=2, group_out_type="concat")
        assert [g.shape[1] for g in groups] == [4, 2]
        groups = m.lookup_embedding_slice([["a", "b"], ["c"]], "s4", slice_dim=2, group_out_type="add_n")
        def at(f, col):  # pooled value of table column `col` for feature f
            return pooled[f] + np.array([[len(r) * col * 0.01] for r in feats[f]])

        start_a, start_b = m.slice_dict["a"]["s4"].start, m.slice_dict["b"]["s4"].start
        np.testing.assert_allclose(groups[0][:, 0:1], at("a", start_a) + at("b", start_b), rtol=1e-5)
        pairs = m.lookup_embedding_slice([("a", 1), ("b", 2)], "s5")
        assert [e.shape[1] for e in pairs] == [1, 2]
        # empty row of "c" pools to zero with reduce_sum
        assert float(tf.reduce_sum(tf.abs(lst[1, 2:]))) == 0.0
        # slices are contiguous segments of the feature's table
        starts = [(s.name, s.start, s.end) for s in m.fc_dict["a"].slot.slices]
        assert starts == [("s1", 0, 2), ("s2", 2, 4), ("s3", 4, 6), ("s4", 6, 8), ("s5", 8, 9)]
        # layouts have -1 as batch dim
        layout = next(v for k, v in m.layout_dict.items() if k.startswith("s2_"))
        assert layout.shape == [[-1, 2, 2]] or layout.shape == [[-1, 4]] or layout.shape == [[-1, 2]]
        assert all(s[0] == -1 for cfg in m.layout_dict.values() for s in cfg.shape)

        with pytest.raises(ValueError, match="ValueError for features"):
            m.lookup_embedding_slice(["a", ["b"]], "s6", slice_dim=2)
        with pytest.raises(ValueError, match="ValueError for features"):
            m.lookup_embedding_slice("a", "s6", slice_dim=2)
        with pytest.raises(ValueError, match="ValueError for features"):
            m.lookup_embedding_slice(["a", "b"], "s6")
        with pytest.raises(ValueError, match="group_out_type"):
            m.lookup_embedding_slice([["a"], ["b"]], "s6", slice_dim=2, group_out_type="stack")
        with pytest.raises(ValueError, match="out_type"):
            m.lookup_embedding_slice(["a"], "s6", slice_dim=2, out_type="mean")
        with pytest.raises(ValueError, match="has dim 2"):
            m.lookup_embedding_slice(["a"], "s1", slice_dim=5)
        with pytest.raises(ValueError, match="create_embedding_feature_column"):
            m.lookup_embedding_slice(["zzz"], "s1", slice_dim=2)


def test_combiners_mean_and_first_n_and_shared_tables():
    m = _Model()
    feats = {"seq": [[1, 2, 3], [4], []], "x": [[1], [2], [3]], "y": [[7], [8], [9]]}
    m.create_embedding_feature_column("seq", combiner="first_n", max_seq_length=2)
    m.create_embedding_feature_column("x", combiner="reduce_mean")
    m.create_embedding_feature_column("y", shared_name="x_table")
    m.create_embedding_feature_column("x2", shared_name="x_table")
    assert m.fc_dict["y"].slot is m.fc_dict["x2"].slot and m.fc_dict["y"].slot.name == "x_table"
    with lookup_inputs(_inputs(feats)):
        (seq,) = m.lookup_embedding_slice(["seq"], "v", slice_dim=1)
        np.testing.assert_allclose(seq[..., 0], [[0.1, 0.2], [0.4, 0.0], [0.0, 0.0]], rtol=1e-6)
        (x,) = m.lookup_embedding_slice(["x"], "v", slice_dim=1)
        np.testing.assert_allclose(x[:, 0], [0.1, 0.2, 0.3], rtol=1e-6)
    with pytest.raises(ValueError, match="combiner"):
        m.create_embedding_feature_column("z", combiner="max")
    with pytest.raises(ValueError, match="max_seq_length"):
        m.create_embedding_feature_column("z", combiner="first_n")
    with pytest.raises(ValueError, match="occurrence_threshold"):
        m.create_embedding_feature_column("y2", shared_name="x_table", occurrence_threshold=3)


@pytest.mark.parametrize("name", ["reduce_sum", "reduce_mean"])
def test_pooling_combiners_gather_and_pool_as_tensorflow_does_forward_and_backward(name):
    """`combine_rows` (one fused op) against tf.gather + segment sum over TF's own segment ids, empty rows
    included; the gradient reaching the distinct rows too."""
    from worker.modeling.combiners import from_name

    rng = np.random.default_rng(0)
    rows = tf.constant(rng.normal(size=(5, 3)).astype(np.float32))
    index = tf.constant([4, 0, 0, 2, 1, 4, 3], tf.int32)
    splits = tf.constant([0, 3, 3, 4, 7, 7], tf.int64)
    weights = tf.constant(rng.normal(size=(5, 3)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(rows)
        got = from_name(name).combine_rows(rows, index, splits, 3)
        want = tf.math.unsorted_segment_sum(tf.gather(rows, index), tf.ragged.row_splits_to_segment_ids(splits), 5)
        if name == "reduce_mean":
            want = tf.math.divide_no_nan(want, tf.cast(splits[1:] - splits[:-1], tf.float32)[:, None])
        got_loss, want_loss = tf.reduce_sum(got * weights), tf.reduce_sum(want * weights)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tf.convert_to_tensor(tape.gradient(got_loss, rows)).numpy(),
                               tf.convert_to_tensor(tape.gradient(want_loss, rows)).numpy(), rtol=1e-6, atol=1e-7)


def test_fused_layout_rejects_group_pool_and_delegates():
    class Layouts:
        def create_feature_slot(self, config):
            return None

        def get_layout(self, name):
            return ("layout", name)

    m = _Model()
    m._ctx = NativeContext(layout_factory=Layouts())
    assert m.is_fused_layout()
    with pytest.raises(ValueError, match="group pool is not support when fused_layout"):
        m.lookup_embedding_slice([["a"], ["b"]], "vec", slice_dim=4)
    kind, name = m.lookup_embedding_slice(["a", "b"], "vec", slice_dim=4)
    assert kind == "layout" and name.startswith("vec_")


def test_model_fn_spec_normalisation_and_errors():
    m = _Model()
    m._default_dense_optimizer = None
    pred, label, loss = tf.constant([0.2, 0.7]), tf.constant([0.0, 1.0]), tf.constant(1.5)
    out = m._normalize(EstimatorSpec(label={"b": label, "a": label}, pred={"b": pred, "a": pred}, loss=loss,
                                     optimizer="opt", classification=[True, False]), ModeKeys.TRAIN)
    assert out.head_names == ["b", "a"] and out.classification == [True, False]
    out = m._normalize((label, loss, pred), ModeKeys.EVAL)
    assert out.head_names == ["ctr_head"] and out.classification == [True]
    with pytest.raises(Exception, match="EstimatorSpec Error!"):
        m._normalize({"pred": pred}, ModeKeys.TRAIN)
    # no optimizer: the Estimator decides (an error only when there are dense variables to train)
    assert m._normalize(EstimatorSpec(label=label, pred=pred, loss=loss), ModeKeys.TRAIN).optimizer is None
    with pytest.raises(ValueError, match="head names"):
        m._normalize(EstimatorSpec(label=[label, label], pred=[pred, pred], head_name=["x"], loss=loss),
                     ModeKeys.EVAL)
    with pytest.raises(ValueError, match="need one label"):
        m._normalize(EstimatorSpec(pred=pred, loss=loss), ModeKeys.EVAL)
    with pytest.raises(ValueError, match="no loss"):
        m._normalize(EstimatorSpec(label=label, pred=pred), ModeKeys.EVAL)
    assert m._normalize(EstimatorSpec(pred=pred), ModeKeys.PREDICT).loss is None


def test_add_loss_extra_output_hooks_and_layout():
    m = _Model()

    @tf.function
    def trace():
        m.add_loss(tf.constant(1.0))
        m.add_loss([tf.constant(2.0), tf.constant(3.0)])
        m.add_extra_output("emb", tf.constant([1.0]))
        with pytest.raises(KeyError, match="emb"):
            m.add_extra_output("emb", tf.constant([2.0]))
        out = m._normalize(EstimatorSpec(label=tf.constant([1.0]), pred=tf.constant([0.5]), loss=tf.constant(0.5)),
                           ModeKeys.EVAL)
        assert "emb" in out.extra_outputs
        return out.loss

    assert float(trace()) == 6.5

    from worker.modeling.hooks.file_metric import FileMetricHook
    from worker.modeling.hooks.kafka_metric import KafkaMetricHook
    from worker.modeling.hooks.step_loss import StepLossMetricHook

    m.add_training_hook(KafkaMetricHook(brokers="127.0.0.1:1", topic="t"))
    m.add_training_hook(FileMetricHook(base_name="/tmp/unused"))
    m.add_training_hook(StepLossMetricHook())
    m.add_training_hook(StepLossMetricHook())
    with pytest.raises(ValueError, match="KafkaMetricHook"):
        m.add_training_hook(KafkaMetricHook(brokers="127.0.0.1:1", topic="t"))
    with pytest.raises(ValueError, match="FileMetricHook"):
        m.add_training_hook(FileMetricHook(base_name="/tmp/unused"))
    assert len(m._training_hooks) == 4
    factory = FeatureFactory()
    slot = factory.create_feature_slot(FeatureSlotConfig(name="f"))
    fs = slot.add_feature_slice(3)
    cfg = m.add_layout("L", [("f", fs)], "concat", [tf.TensorShape([32, 3]), [None, 4, 5]])
    assert cfg.out_type == "concat" and cfg.shape == [[-1, 3], [-1, 4, 5]]
    assert (cfg.slice_configs[0].feature_name, cfg.slice_configs[0].start, cfg.slice_configs[0].end) == ("f", 0, 3)
    with pytest.raises(ValueError, match="out_type"):
        m.add_layout("L", [], "mean", [])


def test_feature_slot_config_and_slices_validate():
    with pytest.raises(ValueError, match="occurrence_threshold"):
        FeatureSlotConfig(name="a", occurrence_threshold=-1)
    with pytest.raises(ValueError, match="expire_time"):
        FeatureSlotConfig(name="a", expire_time=0)
    slot = FeatureFactory().create_feature_slot(FeatureSlotConfig(name="a", has_bias=True))
    assert slot.bias_slice is not None and (slot.bias_slice.start, slot.bias_slice.end) == (0, 1)
    with pytest.raises(ValueError, match="positive int"):
        slot.add_feature_slice(0)
    cfg = slot.table_config()
    assert cfg["segments"][0]["optimizer"]["type"] == "ftrl"
    assert cfg["segments"][0]["initializer"] == {"type": "zeros"}
    slot.add_feature_slice(4)
    seg = slot.table_config()["segments"][1]
    assert seg["initializer"]["type"] == "random_uniform" and seg["initializer"]["maxval"] == 0.05
    assert seg["optimizer"]["type"] == "adagrad" and seg["optimizer"]["initial_accumulator_value"] == 1.0
    slot.frozen = True
    with pytest.raises(ValueError, match="cannot add slice"):
        slot.add_feature_slice(2)
    with pytest.raises(ValueError, match="no slices"):
        FeatureFactory().create_feature_slot(FeatureSlotConfig(name="e")).table_config()


def test_params_tree():
    p = Params()
    p.define("x", 1)
    with pytest.raises(AttributeError, match="identifier"):
        p.define("a b", 1)
    q = p.copy()
    q.x = 2
    assert p.x == 1 and q.to_dict() == {"x": 2}
    assert isinstance(NativeTask.params(), Params)


def test_auc_and_mse_against_pairwise_definition():
    rng = np.random.RandomState(3)
    labels = rng.randint(0, 2, 300).astype(np.float64)
    preds = np.round(rng.rand(300) + labels * 0.3, 2)  # ties on purpose
    pos, neg = preds[labels == 1], preds[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    pairwise = wins / (pos.size * neg.size)
    assert auc(labels, preds) == pytest.approx(pairwise, abs=1e-12)
    assert math.isnan(auc(np.ones(3), np.ones(3)))
    assert mse([1.0, 2.0], [0.0, 4.0]) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="labels"):
        auc(np.ones(3), np.ones(4))


def test_share_slot_reads_a_feature_again_through_the_same_table():
    m = _Model()
    feats = {"a": [[1, 2], [3]]}
    out = m.share_slot({"a": "A"}, share_meta={"a": (False, 7)})
    assert out == {"a": "A", "a_share": "A"}
    m.create_embedding_feature_column("a")
    fc = m.create_embedding_feature_column("a_share")
    assert fc.slot is m.fc_dict["a"].slot and fc.slot.name == "a"
    inputs = _inputs({"a": feats["a"], "a_share": feats["a"]})
    with lookup_inputs(inputs):
        x, y = m.lookup_embedding_slice(["a", "a_share"], "vec", slice_dim=2)
        np.testing.assert_allclose(x, y)
    assert [s.name for s in fc.slot.slices] == ["vec"]
    with pytest.raises(KeyError, match="zz"):
        m.share_slot({"a": 1}, share_meta={"zz": (True, 1)})
    mapper = m.share_slot(share_meta={"a": (False, 7)})
    assert mapper({"a": 5}) == {"a": 5, "a_share": 5}


def test_native_context_applies_embedding_gradients_through_the_store():
    from worker.modeling.segment_configs import SgdOptimizer, ZerosInitializer
    from worker.runtime.backends import LocalBackend

    factory = FeatureFactory()
    ctx = NativeContext(feature_factory=factory)
    with pytest.raises(RuntimeError, match="no backend"):
        ctx.apply_embedding_gradients({"a": (np.array([1]), np.ones((1, 2), np.float32))})
    slot = ctx.create_feature_slot(FeatureSlotConfig(name="a"))
    slot.add_feature_slice(2, ZerosInitializer(), SgdOptimizer(0.5))
    factory.backend = LocalBackend()
    factory.backend.create_tables(factory.table_configs())
    ids = np.array([3, 4, 3], np.int64)
    grads = np.array([[1.0, 2.0], [0.5, 0.5], [1.0, 0.0]], np.float32)
    ctx.apply_embedding_gradients({"a": (ids, grads)}, scale=2)
    rows = factory.backend.lookup({"a": np.array([3, 4, 5], np.int64)})["a"]
    np.testing.assert_allclose(rows, [[-2.0, -2.0], [-0.5, -0.5], [0.0, 0.0]])  # duplicates summed; 5 absent
    with pytest.raises(ValueError, match="unknown table 'b'"):
        ctx.apply_embedding_gradients({"b": (ids, grads)})
    with pytest.raises(ValueError, match="no feature_factory"):
        NativeContext().apply_embedding_gradients({})


def test_entry_optimizer_defaults_are_the_ps_defaults():
    """One set of defaults (docs/defaults.md): `AdagradOptimizer()` etc. configure exactly what the PS
    optimizer of that name does when a config leaves the value out (Monolith's proto defaults)."""
    from ps.config import OPTIMIZER_SPECS
    from worker.modeling.segment_configs import AdagradOptimizer, AdamOptimizer, FtrlOptimizer, SgdOptimizer

    for cls in (SgdOptimizer, AdagradOptimizer, FtrlOptimizer, AdamOptimizer):
        cfg = cls().to_config()
        defaults = OPTIMIZER_SPECS[cfg.pop("type")].defaults
        assert cfg == {k: defaults[k] for k in cfg}, (cls.__name__, cfg, defaults)
    assert AdagradOptimizer().initial_accumulator_value == tf.keras.optimizers.Adagrad().initial_accumulator_value


def test_a_slice_without_optimizer_gets_monoliths_slot_default_and_says_so(caplog):
    import logging

    slot = FeatureFactory().create_feature_slot(FeatureSlotConfig(name="user"))
    with caplog.at_level(logging.INFO, logger="worker.modeling.feature"):
        slot.add_feature_slice(4, name="vec")
    segment = slot.table_config()["segments"][0]
    assert segment["optimizer"] == {"type": "adagrad", "learning_rate": 0.001, "initial_accumulator_value": 1.0}
    assert segment["initializer"] == {"type": "random_uniform", "minval": -0.05, "maxval": 0.05}
    assert "slice 'vec' of table 'user' uses the table's default initializer" in caplog.text
    assert "optimizer {'type': 'adagrad'" in caplog.text
