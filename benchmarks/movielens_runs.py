"""The three ways a benchmark trains the MovieLens model: local mode, a local PS cluster, plain Keras."""
from __future__ import annotations

import io
import json
import os
import tempfile
import time

from movielens_keras import KerasMovieRanking

from worker.models.movielens import MovieRankingModel
from worker.models.movielens_data import load_movielens
from worker.runtime.estimator import Estimator
from worker.runtime.run_config import RunConfig

MODEL = "worker.models.movielens:MovieRankingModel"


def run_local(steps: int, batch_size: int, evaluate: bool = True, staleness: int = 0) -> dict:
    model = MovieRankingModel(batch_size=batch_size)
    est = Estimator(model, RunConfig(model_dir=tempfile.mkdtemp(prefix="bench-local-"), staleness=staleness,
                                     log_step_count_steps=10**9))
    est.train(0)  # build and trace outside the timed part, as the other runs do
    stats = est.train(steps)
    out = {"examples_per_sec": stats["examples_per_sec"], "global_step": stats["global_step"]}
    if evaluate:
        out["auc"] = est.evaluate()["ctr_auc"]
    out["table_sizes"] = est.table_sizes()
    return out


def run_cluster(num_ps: int, num_workers: int, steps: int, batch_size: int, evaluate: bool = True,
                staleness: int = 1) -> dict:
    from launch.local_cluster import run_local_cluster

    model_dir = tempfile.mkdtemp(prefix=f"bench-{num_ps}ps{num_workers}w-")
    summary = os.path.join(model_dir, "summary.json")
    args = ["--max-steps", str(steps), "--batch-size", str(batch_size), "--staleness", str(staleness),
            "--summary-file", summary] + (["--eval"] if evaluate else [])
    log = io.StringIO()
    code = run_local_cluster(num_ps, num_workers, MODEL, model_dir, train_args=args, out=log)
    if code != 0 or not os.path.exists(summary):
        raise RuntimeError(f"{num_ps} PS x {num_workers} workers failed (exit {code}):\n{log.getvalue()[-4000:]}")
    with open(summary) as fh:
        result = json.load(fh)
    out = {"examples_per_sec": result["examples_per_sec"], "global_step": result["global_step"],
           "table_sizes": result["table_sizes"]}
    if evaluate:
        out["auc"] = result["auc"]["ctr"]
    return out


def run_keras(steps: int, batch_size: int, evaluate: bool = True, warmup_steps: int = 5) -> dict:
    data = load_movielens()
    train, test = data.split(0.8)
    model = KerasMovieRanking(data.vocab_sizes)
    started = time.perf_counter()
    stats = model.fit(train, batch_size, steps, warmup_steps=warmup_steps)
    out = {"examples_per_sec": stats["examples_per_sec"], "global_step": steps,
           "seconds": time.perf_counter() - started}
    if evaluate:
        out["auc"] = model.evaluate(test, batch_size)
    return out
