"""One checkpoint format for both modes: local mode writes what PS shards write, so a local checkpoint resumes
on PS shards and a distributed one resumes locally, with the embedding rows, the dense values and the dense
optimizer's state (Adam: m, v and its bias-correction powers) carried over.

Each resumed run is compared with a local run that trained straight through. The dense optimizer runs
in the graph locally and in the store's kernels on the PS, so the two modes agree to float32 rounding.
"""
import os

import numpy as np
import pytest
import tensorflow as tf

from ps.persist import checkpoint as layout
from tests.test_worker_distributed import start_ps
from tests.tiny_models import FEATURES, VOCAB, TinyDNN
from worker.model import AdagradOptimizer, Estimator, RunConfig

pytestmark = pytest.mark.slow  # trains models end to end: left out of `make test-fast`

STEPS, SAVED_AT = 12, 8


def _model(dense_optimizer=lambda: tf.keras.optimizers.Adam(0.01)):
    return TinyDNN(AdagradOptimizer(0.2, initial_accumulator_value=0.1), dense_optimizer=dense_optimizer)


def _run(model_dir, steps, ps=None, save_every=None, dense_optimizer=None):
    model = _model() if dense_optimizer is None else _model(dense_optimizer)
    est = Estimator(model, RunConfig(model_dir=str(model_dir), ps_addresses=ps, save_checkpoints_steps=save_every,
                                     log_step_count_steps=1000))
    est.train(steps)
    rows = est.backend.lookup({f: np.arange(VOCAB, dtype=np.int64) for f in FEATURES})
    pulled = est.backend.pull_dense()
    names = [f"dense_{i:04d}" for i in range(len(est.dense_variables()))]
    dense = [pulled[n] for n in names] if pulled is not None else [v.numpy() for v in est.dense_variables()]
    step = est.backend.global_step()
    est.close()
    return rows, dense, step


def _assert_close(got, want, exact=False):
    (rows, dense, step), (ref_rows, ref_dense, ref_step) = got, want
    assert step == ref_step
    check = np.testing.assert_array_equal if exact else (
        lambda a, b, err_msg="": np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=err_msg))
    for f in FEATURES:
        check(rows[f], ref_rows[f], err_msg=f)
    assert len(dense) == len(ref_dense)
    for a, b in zip(dense, ref_dense):
        check(np.reshape(a, np.shape(b)), b)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("straight"), STEPS)


def test_local_checkpoints_are_coordinated_checkpoints(tmp_path, straight):
    _run(tmp_path, SAVED_AT, save_every=SAVED_AT)
    path = layout.latest_checkpoint(tmp_path)
    assert path == layout.checkpoint_path(tmp_path, SAVED_AT)
    assert sorted(os.listdir(path)) == [layout.MANIFEST, "shard-0-of-1"]
    manifest = layout.read_meta(path, "manifest")
    assert manifest["num_shards"] == 1 and manifest["global_step"] == SAVED_AT
    assert set(manifest["tables"]) == set(FEATURES) and len(manifest["dense"]) == 4
    adam = {e["config"]["segments"][0]["optimizer"]["type"] for e in manifest["dense"].values()}
    assert adam == {"adam"}  # the dense optimizer is saved as its PS equivalent
    _assert_close(_run(tmp_path, STEPS), straight, exact=True)  # and local resume stays exact


def test_local_resume_is_exact_with_an_optimizer_the_ps_cannot_run(tmp_path):
    def rmsprop():
        return tf.keras.optimizers.RMSprop(0.01, momentum=0.5)

    want = _run(tmp_path / "straight", STEPS, dense_optimizer=rmsprop)
    _run(tmp_path / "resumed", SAVED_AT, save_every=SAVED_AT, dense_optimizer=rmsprop)
    _assert_close(_run(tmp_path / "resumed", STEPS, dense_optimizer=rmsprop), want, exact=True)


def test_a_local_checkpoint_resumes_on_two_ps_shards(processes, tmp_path, straight):
    _run(tmp_path, SAVED_AT, save_every=SAVED_AT)
    resumed = _run(tmp_path, STEPS, ps=start_ps(processes, 2))
    _assert_close(resumed, straight)


def test_a_checkpoint_of_two_ps_shards_resumes_locally(processes, tmp_path, straight):
    _run(tmp_path, SAVED_AT, ps=start_ps(processes, 2), save_every=SAVED_AT)
    assert sorted(os.listdir(layout.checkpoint_path(tmp_path, SAVED_AT)))[1:] == ["shard-0-of-2", "shard-1-of-2"]
    _assert_close(_run(tmp_path, STEPS), straight)
