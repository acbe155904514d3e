"""Distributed mode against real PS processes: parity, exact resume, and 2 PS x 2 async worker processes."""
import json
import os
import sys

import numpy as np
import pytest

from services.ports import free_port
from tests.test_worker_parity import CASES, STEPS, reference_run
from tests.tiny_models import FEATURES, VOCAB, TinyDNN
from worker.model import Estimator, RunConfig, SgdOptimizer

pytestmark = pytest.mark.slow


def start_ps(processes, num_shards: int) -> list[str]:
    addresses = []
    for i in range(num_shards):
        port = free_port()
        processes.start(["-m", "launch.cli", "ps", "--port", str(port), "--shard-index", str(i),
                         "--num-shards", str(num_shards)], name=f"ps{i}")
        addresses.append(f"127.0.0.1:{port}")
    return addresses


def test_distributed_one_ps_one_worker_matches_pure_tensorflow(processes, tmp_path):
    store_opt, keras_opt = CASES["adagrad"]
    model = TinyDNN(store_opt)
    model.clip_norm = 2.0
    model.dense_weight_decay = 0.01
    est = Estimator(model, RunConfig(model_dir=str(tmp_path), ps_addresses=start_ps(processes, 1), staleness=0))
    initial, ref_losses, ref_dense, ref_tables = reference_run(keras_opt(), model.dense_weight_decay, model.clip_norm)
    losses = []

    class LossHook:
        def begin(self): pass
        def before_step(self, ctx): return []
        def after_step(self, ctx, result): losses.append(result.loss)
        def end(self): pass

    est.hooks.append(LossHook())
    est.train(STEPS)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    pulled = est.backend.pull_dense()
    for name, theirs in zip(est._dense.names, ref_dense):
        np.testing.assert_allclose(pulled[name], theirs, rtol=1e-5, atol=1e-5)
    ids = np.arange(VOCAB, dtype=np.int64)
    rows = est.backend.lookup({f: ids for f in FEATURES})
    for f in FEATURES:
        np.testing.assert_allclose(rows[f], ref_tables[f], rtol=1e-5, atol=1e-5)
    metrics = est.evaluate()
    preds = np.array([p["ctr"] for p in est.predict()])
    assert metrics["examples"] == preds.size == 30 * 32 and 0.5 < metrics["ctr_auc"] <= 1
    assert np.all((preds > 0) & (preds < 1))
    est.close()


def _state(est):
    rows = est.backend.lookup({f: np.arange(VOCAB, dtype=np.int64) for f in FEATURES})
    return rows, est.backend.pull_dense()


def test_distributed_checkpoint_resume_is_exact(processes, tmp_path):
    def estimator(addresses, model_dir, save_every=None):
        return Estimator(TinyDNN(SgdOptimizer(0.3)), RunConfig(model_dir=model_dir, ps_addresses=addresses,
                                                               save_checkpoints_steps=save_every))

    straight = estimator(start_ps(processes, 2), str(tmp_path / "a"))
    straight.train(12)
    ref_rows, ref_dense = _state(straight)
    straight.close()

    first = estimator(start_ps(processes, 2), str(tmp_path / "b"), save_every=4)
    first.train(8)
    first.close()
    for proc, _ in list(processes.procs)[2:]:
        processes.stop(proc)
    resumed = estimator(start_ps(processes, 2), str(tmp_path / "b"), save_every=4)  # fresh PS processes
    stats = resumed.train(12)
    assert stats["steps"] == 4 and stats["global_step"] == 12
    rows, dense = _state(resumed)
    for f in FEATURES:
        np.testing.assert_array_equal(rows[f], ref_rows[f])
    for name in ref_dense:
        np.testing.assert_array_equal(dense[name], ref_dense[name])
    resumed.close()


def test_two_ps_two_async_workers_with_cli(processes, tmp_path):
    addresses = ",".join(start_ps(processes, 2))
    summary = tmp_path / "summary.json"
    workers = []
    for i in range(2):
        args = ["-m", "launch.cli", "train", "--model", "tests.tiny_models:TinyDNN", "--ps", addresses,
                "--worker-index", str(i), "--num-workers", "2", "--model-dir", str(tmp_path / "m"),
                "--max-steps", "800", "--staleness", "1", "--save-checkpoints-steps", "400"]
        if i == 0:
            args += ["--eval", "--summary-file", str(summary)]
        workers.append(processes.start(args, name=f"worker{i}"))
    for w in workers:
        assert w.wait(timeout=240) == 0, processes.log_of(w)[-3000:]
    result = json.loads(summary.read_text())
    assert result["mode"] == "distributed" and result["num_ps"] == 2 and result["num_workers"] == 2
    other = json.loads(processes.log_of(workers[1]).split("trained: ")[1].splitlines()[0].replace("'", '"'))
    assert result["global_step"] >= 800 and result["steps"] > 0 and other["steps"] > 0  # both trained
    # every step increments the shared global step once: the last increment saw them all
    assert max(result["global_step"], other["global_step"]) == result["steps"] + other["steps"]
    assert result["auc"]["ctr"] > 0.6 and result["examples_per_sec"] > 0
    assert set(result["table_sizes"]) == set(FEATURES) and all(v > 0 for v in result["table_sizes"].values())
    assert os.path.isdir(result["checkpoint"])
    assert "[worker:1]" in processes.log_of(workers[1])


def test_cli_rejects_bad_arguments(tmp_path):
    from launch.cli import main

    with pytest.raises(ValueError, match="pkg.module:Class"):
        main(["train", "--model", "nocolon", "--model-dir", str(tmp_path), "--max-steps", "1"])
    with pytest.raises(ValueError, match="has no 'Nope'"):
        main(["train", "--model", "tests.tiny_models:Nope", "--model-dir", str(tmp_path), "--max-steps", "1"])
    with pytest.raises(ValueError, match="ps_addresses"):
        main(["train", "--model", "tests.tiny_models:TinyDNN", "--model-dir", str(tmp_path), "--max-steps", "1",
              "--ps", "nohostport"])
    assert sys.modules.get("tests.tiny_models") is not None


def test_workers_read_through_the_tf_data_service(tmp_path):
    import io

    from launch.local_cluster import run_local_cluster

    summary = tmp_path / "summary.json"
    out = io.StringIO()
    code = run_local_cluster(1, 2, "tests.tiny_models:TinyDNN", str(tmp_path / "m"), dataservice=True,
                             num_dsworkers=1, out=out,
                             train_args=["--max-steps", "200", "--eval", "--summary-file", str(summary)])
    log = out.getvalue()
    assert code == 0, log[-4000:]
    jobs = {line.rsplit("job ", 1)[1].strip() for line in log.splitlines() if "from the tf.data service" in line}
    assert len(jobs) == 1, log[-4000:]  # one shared job (a worker that starts after the end reads nothing)
    result = json.loads(summary.read_text())
    assert result["global_step"] >= 200 and result["auc"]["ctr"] > 0.5


def test_final_checkpoint_evaluation_and_summary_come_after_every_worker(processes, tmp_path):
    """Issue 11's repro: 2 PS x 2 workers via `monolith local`, max_steps not divisible by the workers. The
    last checkpoint, the evaluation and the summary are all at the job's final global step, taken after
    both workers finished and pushed."""
    from ps.persist import checkpoint as ckpt

    max_steps, model_dir, summary = 151, tmp_path / "m", tmp_path / "summary.json"
    local = processes.start(["-m", "launch.cli", "local", "--num-ps", "2", "--num-workers", "2",
                             "--model", "tests.tiny_models:TinyDNN", "--model-dir", str(model_dir),
                             "--max-steps", str(max_steps), "--", "--eval", "--summary-file", str(summary),
                             "--save-checkpoints-steps", "50"], name="local")
    assert local.wait(timeout=400) == 0, processes.log_of(local)[-4000:]
    log = processes.log_of(local)
    result = json.loads(summary.read_text())
    latest = ckpt.latest_checkpoint(model_dir)
    manifest = ckpt.read_meta(latest, "manifest")
    assert latest.name == f"ckpt-{max_steps}" and manifest["global_step"] == max_steps
    assert result["global_step"] == result["eval"]["global_step"] == max_steps
    assert result["checkpoint"] == str(latest)
    trained = [json.loads(line.split("trained: ")[1].replace("'", '"')) for line in log.splitlines()
               if "worker.train_main: trained: " in line]
    assert len(trained) == 2 and all(t["steps"] > 0 for t in trained), trained
    assert sum(t["steps"] for t in trained) == max_steps  # every claimed step was pushed, none twice
    chief = [line for line in log.splitlines() if line.startswith("[worker:0]")]
    met = next(i for i, line in enumerate(chief) if f"all 2 workers finished training; the job's global step "
                                                      f"is {max_steps}" in line)
    evaluated = next(i for i, line in enumerate(chief) if f"eval at global step {max_steps}" in line)
    assert met < evaluated
