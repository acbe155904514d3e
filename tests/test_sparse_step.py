"""The sparse step: ids are deduplicated once (on the worker, once per table and batch), features sharing a
table push the sum of their gradients, and the result equals TensorFlow with a shared tf.Variable table."""
import numpy as np
import pytest
import tensorflow as tf

import ps.kernels.routing as routing_kernels
from tests.test_worker_distributed import start_ps
from tests.tiny_models import BATCH, DIM, FEATURES, VOCAB, TinyDNN, batch_tensors, dense_layers, make_batches
from worker.model import Estimator, RunConfig, SgdOptimizer
from worker.modeling.estimator_spec import EstimatorSpec, ModeKeys
from worker.runtime.batch_prep import BatchPreparer

STEPS = 6
TABLES = {"f0": "f0", "f1": "f0", "f2": "f2"}  # f1 reads f0's table


class SharedTable(TinyDNN):
    """TinyDNN whose features f0 and f1 read one table."""

    def model_fn(self, features, mode):
        self.create_embedding_feature_column("f0")
        self.create_embedding_feature_column("f1", shared_name="f0")
        self.create_embedding_feature_column("f2")
        x = self.lookup_embedding_slice(list(FEATURES), "vec", slice_dim=DIM, initializer={"type": "zeros"},
                                        optimizer=self.emb_optimizer, out_type="concat")
        l1, l2 = dense_layers()
        logits = tf.reshape(l2(l1(x)), [-1])
        if mode == ModeKeys.PREDICT:
            return EstimatorSpec(pred=tf.sigmoid(logits), head_name="ctr")
        loss = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=features["label"], logits=logits))
        return EstimatorSpec(label=features["label"], pred=tf.sigmoid(logits), head_name="ctr", loss=loss,
                             optimizer=tf.keras.optimizers.SGD(self.dense_lr))


def reference_tables(steps: int) -> dict[str, np.ndarray]:
    """Plain TensorFlow: two tf.Variable tables, f0 and f1 both gather from the first; SGD on everything."""
    tables = {"f0": tf.Variable(tf.zeros([VOCAB, DIM])), "f2": tf.Variable(tf.zeros([VOCAB, DIM]))}
    l1, l2 = dense_layers()
    l1.build((None, DIM * len(FEATURES)))
    l2.build((None, 8))
    dense = [l1.kernel, l1.bias, l2.kernel, l2.bias]
    emb_opt, dense_opt = tf.keras.optimizers.SGD(0.3), tf.keras.optimizers.SGD(0.05)
    for b in make_batches()[:steps]:
        feats = batch_tensors(b)
        with tf.GradientTape() as tape:
            pooled = [tf.math.unsorted_segment_sum(tf.gather(tables[TABLES[f]], feats[f].values),
                                                   feats[f].value_rowids(), BATCH) for f in FEATURES]
            logits = tf.reshape(l2(l1(tf.concat(pooled, axis=1))), [-1])
            loss = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=feats["label"], logits=logits))
        grads = tape.gradient(loss, dense + list(tables.values()))
        dense_opt.apply_gradients(zip(grads[:4], [v.value if hasattr(v, "value") else v for v in dense]))
        emb_opt.apply_gradients(zip([tf.convert_to_tensor(g) for g in grads[4:]], tables.values()))
    return {name: t.numpy() for name, t in tables.items()}


@pytest.fixture
def dedupe_passes(monkeypatch):
    """Counts every id dedupe of the worker process: the routing kernel and numpy's sorting unique."""
    counts = {"hash": 0, "np.unique": 0, "batches": 0}
    hash_kernel, np_unique, dedupe = routing_kernels._unique_inverse, np.unique, BatchPreparer.dedupe

    def counted_batch(self, features):
        counts["batches"] += 1
        return dedupe(self, features)

    def counted_hash(ids):
        counts["hash"] += 1
        return hash_kernel(ids)

    def counted_unique(*args, **kwargs):
        counts["np.unique"] += 1
        return np_unique(*args, **kwargs)

    monkeypatch.setattr(routing_kernels, "_unique_inverse", counted_hash)
    monkeypatch.setattr(np, "unique", counted_unique)
    monkeypatch.setattr(BatchPreparer, "dedupe", counted_batch)
    return counts


def _train_counting(est: Estimator, counts: dict) -> dict:
    est.train(0)  # trace and create the tables outside the count
    counts.update(hash=0, batches=0, **{"np.unique": 0})
    est.train(STEPS)
    assert counts["batches"] >= STEPS  # (the prefetch thread may have read ahead)
    return dict(counts)


def _check_tables(est: Estimator) -> None:
    want = reference_tables(STEPS)
    got = est.backend.lookup({name: np.arange(VOCAB, dtype=np.int64) for name in want})
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.abs(want["f0"]).max() > 1e-3  # the shared table did learn


def test_local_step_dedupes_once_per_table_and_sums_shared_features(tmp_path, dedupe_passes):
    est = Estimator(SharedTable(SgdOptimizer(0.3)), RunConfig(model_dir=str(tmp_path), log_step_count_steps=1000))
    counts = _train_counting(est, dedupe_passes)
    assert counts["hash"] == 2 * counts["batches"] and counts["np.unique"] == 0  # two tables, one pass each
    _check_tables(est)
    est.close()


@pytest.mark.slow
def test_distributed_step_dedupes_once_on_the_worker_and_never_in_the_client(processes, tmp_path, dedupe_passes):
    est = Estimator(SharedTable(SgdOptimizer(0.3)), RunConfig(model_dir=str(tmp_path), ps_addresses=start_ps(
        processes, 2), log_step_count_steps=1000))
    counts = _train_counting(est, dedupe_passes)
    # the client routes the worker's distinct ids as they are: still one pass per table and batch
    assert counts["hash"] == 2 * counts["batches"] and counts["np.unique"] == 0
    _check_tables(est)
    est.close()


def test_shared_tables_push_distinct_ids_unless_admission_counts_every_feature():
    feats = {"a": tf.ragged.constant([[1, 2, 2], [3]], tf.int64), "b": tf.ragged.constant([[2], [4, 4, 1]], tf.int64)}
    for counting, want_ids in ((frozenset(), [1, 2, 3, 4]), (frozenset({"t"}), [1, 2, 3, 1, 2, 4])):
        prep = BatchPreparer(["a", "b"], {"a": "t", "b": "t"}, counting)
        batch = prep.dedupe(feats)
        assert batch.table_ids["t"].tolist() == [1, 2, 3, 4]  # one dedupe, first-occurrence order
        prep.assemble(batch, {"t": np.arange(4, dtype=np.float32)[:, None] * [1, 10]})
        for f in feats:  # each feature's rows, gathered by its index, are the rows of its ids
            np.testing.assert_array_equal(batch.rows[f][batch.index[f], 0], feats[f].values.numpy() - 1)
        grads = {f: np.ones((batch.rows[f].shape[0], 2), np.float32) for f in feats}
        ((ids, summed),) = prep.table_gradients(batch, grads).values()
        assert ids.tolist() == want_ids
        if not counting:  # ids used by both features get both gradients
            np.testing.assert_array_equal(summed[:, 0], [2, 2, 1, 1])


def test_a_shard_checks_each_update_once_before_changing_any_table(monkeypatch):
    """Values enter a shard through the servicer: the table's own checks run there, once per table, and a
    bad second table leaves the first one unchanged."""
    import ps.kernels.hash_index as hash_index
    from ps.service.servicer import ParameterServerServicer
    from ps.store.shard_state import ShardState
    from ps.wire.fast_messages import APPLY_GLOBAL_STEP, decode_updates, encode_updates

    shard = ShardState(0, 1)
    for name in ("a", "b"):
        shard.create_table(name, {"dim": 2, "optimizer": {"type": "sgd", "learning_rate": 1.0}})
    servicer = ParameterServerServicer(shard)
    scans = []
    finite = hash_index.all_finite
    monkeypatch.setattr(hash_index, "all_finite", lambda a: scans.append(a.shape) or finite(a))

    def request(b_values):
        raw = encode_updates([("a", np.array([1, 2]), np.ones((2, 2)), None),
                              ("b", np.array([3]), b_values, None)], {APPLY_GLOBAL_STEP: 1})
        return decode_updates(raw, "ApplyGradientsRequest")

    servicer.apply_gradients(request(np.ones((1, 2))))
    assert scans == [(2, 2), (1, 2)]  # one finiteness scan per table's values
    with pytest.raises(ValueError, match="'b'.*NaN/Inf"):
        servicer.apply_gradients(request(np.array([[np.nan, 0.0]])))
    np.testing.assert_array_equal(shard.table("a").lookup(np.array([1, 2])), -np.ones((2, 2)))  # applied once
