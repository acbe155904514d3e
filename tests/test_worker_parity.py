"""Parity (Monolith's model_comp_test idea): our worker + store vs embeddings as plain tf.Variables.

Same data, same MLP initialisation, same optimizers; the reference uses TensorFlow's own Keras
optimizers on dense `tf.Variable` embedding tables. 1 worker, staleness 0, 25 steps, 1e-5.
"""
import numpy as np
import pytest
import tensorflow as tf

from tests.tiny_models import BATCH, DIM, FEATURES, VOCAB, TinyDNN, batch_tensors, dense_layers, make_batches
from worker.model import AdagradOptimizer, Estimator, RunConfig, SgdOptimizer

pytestmark = pytest.mark.slow  # trains models end to end: left out of `make test-fast`

STEPS = 25

CASES = {
    "sgd": (SgdOptimizer(learning_rate=0.5), lambda: tf.keras.optimizers.SGD(0.5)),
    "adagrad": (AdagradOptimizer(learning_rate=0.3, initial_accumulator_value=0.1),
                lambda: tf.keras.optimizers.Adagrad(0.3, initial_accumulator_value=0.1, epsilon=0.0)),
}


def reference_run(emb_keras_optimizer, weight_decay: float, clip_norm: float):
    tables = {f: tf.Variable(tf.zeros([VOCAB, DIM])) for f in FEATURES}
    l1, l2 = dense_layers()
    l1.build((None, DIM * len(FEATURES)))
    l2.build((None, 8))
    dense_vars = [l1.kernel, l1.bias, l2.kernel, l2.bias]
    initial = [v.numpy().copy() for v in dense_vars]
    dense_opt, emb_opt = tf.keras.optimizers.SGD(0.05), emb_keras_optimizer
    emb_vars = [tables[f] for f in FEATURES]
    losses = []
    for b in make_batches()[:STEPS]:
        feats = batch_tensors(b)
        with tf.GradientTape() as tape:
            pooled = [tf.math.unsorted_segment_sum(tf.gather(tables[f], feats[f].values), feats[f].value_rowids(),
                                                   BATCH) for f in FEATURES]
            logits = tf.reshape(l2(l1(tf.concat(pooled, axis=1))), [-1])
            loss = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=feats["label"], logits=logits))
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, dense_vars + emb_vars)]
        grads, _ = tf.clip_by_global_norm(grads, clip_norm)
        dense_grads = [g + weight_decay * v for g, v in zip(grads[:4], dense_vars)]
        dense_opt.apply_gradients(zip(dense_grads, [v.value if hasattr(v, "value") else v for v in dense_vars]))
        emb_opt.apply_gradients(zip(grads[4:], emb_vars))
        losses.append(float(loss))
    return initial, losses, [v.numpy() for v in dense_vars], {f: tables[f].numpy() for f in FEATURES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_local_worker_matches_pure_tensorflow(case, tmp_path):
    store_opt, keras_opt = CASES[case]
    model = TinyDNN(store_opt)
    model.clip_norm = 2.0  # low enough to actually clip some steps
    model.dense_weight_decay = 0.01
    est = Estimator(model, RunConfig(model_dir=str(tmp_path), staleness=0, log_step_count_steps=1000))
    initial, ref_losses, ref_dense, ref_tables = reference_run(keras_opt(), model.dense_weight_decay, model.clip_norm)
    est.train(0)
    for ours, theirs in zip(est.dense_variables(), initial):
        np.testing.assert_array_equal(ours.numpy(), theirs)
    losses = []

    class LossHook:
        def begin(self): pass
        def before_step(self, ctx): return ["loss"]
        def after_step(self, ctx, result): losses.append(float(result.fetches["loss"]))
        def end(self): pass

    est.hooks.append(LossHook())
    stats = est.train(STEPS)
    assert stats["global_step"] == STEPS
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(est.dense_variables(), ref_dense):
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-5, atol=1e-5)
    ids = np.arange(VOCAB, dtype=np.int64)
    for f in FEATURES:
        rows = est.backend.lookup({f: ids})[f]
        np.testing.assert_allclose(rows, ref_tables[f], rtol=1e-5, atol=1e-5)
    assert ref_losses[-1] < ref_losses[0]  # it learned something, so parity is not vacuous
    assert any(np.abs(ref_tables[f]).max() > 1e-3 for f in FEATURES)
