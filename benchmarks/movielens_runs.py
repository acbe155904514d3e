"""The ways a benchmark trains a MovieLens model: local mode, a local PS cluster, plain Keras `fit`.

Two models: `demo` (`worker.models.movielens`, the demo) and `readme` (`movielens_readme_model`, written
from the README alone). Every run reports examples/s and ms/step after its first (tracing) step.
"""
from __future__ import annotations

import io
import json
import os
import tempfile

import movielens_keras
from movielens_readme_model import ReadmeMovieModel

from worker.modeling.estimator_spec import ModeKeys
from worker.models.movielens import MovieRankingModel
from worker.models.movielens_data import load_movielens
from worker.runtime.estimator import Estimator
from worker.runtime.run_config import RunConfig

MODELS = {"demo": ("worker.models.movielens:MovieRankingModel", MovieRankingModel),
          "readme": ("movielens_readme_model:ReadmeMovieModel", ReadmeMovieModel)}
HERE = os.path.dirname(os.path.abspath(__file__))


def _rates(examples_per_sec: float, batch_size: int) -> dict:
    return {"examples_per_sec": examples_per_sec,
            "ms_per_step": 1000.0 * batch_size / examples_per_sec if examples_per_sec else float("nan")}


def run_local(steps: int, batch_size: int, evaluate: bool = True, staleness: int = 0, model: str = "demo") -> dict:
    user_model = MODELS[model][1](batch_size=batch_size)
    est = Estimator(user_model, RunConfig(model_dir=tempfile.mkdtemp(prefix="bench-local-"), staleness=staleness,
                                          log_step_count_steps=10**9))
    est.train(0)  # build and trace
    stats = est.train(steps + 1)  # timed after its first step, as the other runs are
    out = {**_rates(stats["steady_examples_per_sec"], batch_size), "global_step": stats["global_step"],
           "step_ms": stats["step_ms"]}
    if evaluate:
        out["auc"] = est.evaluate()["ctr_auc"]
    out["table_sizes"] = est.table_sizes()
    est.close()
    return out


def run_cluster(num_ps: int, num_workers: int, steps: int, batch_size: int, evaluate: bool = True,
                staleness: int = 1, model: str = "demo") -> dict:
    from launch.local_cluster import run_local_cluster

    model_dir = tempfile.mkdtemp(prefix=f"bench-{num_ps}ps{num_workers}w-")
    summary = os.path.join(model_dir, "summary.json")
    args = ["--max-steps", str(steps + 1), "--batch-size", str(batch_size), "--staleness", str(staleness),
            "--summary-file", summary] + (["--eval"] if evaluate else [])
    log = io.StringIO()
    if HERE not in os.environ.get("PYTHONPATH", "").split(os.pathsep):  # the readme model's module
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))
    code = run_local_cluster(num_ps, num_workers, MODELS[model][0], model_dir, train_args=args, out=log)
    if code != 0 or not os.path.exists(summary):
        raise RuntimeError(f"{num_ps} PS x {num_workers} workers failed (exit {code}):\n{log.getvalue()[-4000:]}")
    with open(summary) as fh:
        result = json.load(fh)
    out = {**_rates(result["steady_examples_per_sec"], batch_size), "global_step": result["global_step"],
           "table_sizes": result["table_sizes"], "step_ms": result.get("step_ms", {})}
    if evaluate:
        out["auc"] = result["auc"]["ctr"]
    return out


def run_keras(steps: int, batch_size: int, evaluate: bool = True, model: str = "demo") -> dict:
    """Plain Keras `fit` on the same model's input (its `input_fn`), the same architecture and optimizers."""
    user_model = MODELS[model][1](batch_size=batch_size)
    keras_model = movielens_keras.KerasMovieRanking(load_movielens().vocab_sizes)
    stats = movielens_keras.fit(keras_model, user_model.input_fn(ModeKeys.TRAIN), batch_size, steps + 1)
    out = {**_rates(stats["examples_per_sec"], batch_size), "global_step": steps + 1}
    if evaluate:
        out["auc"] = movielens_keras.evaluate(keras_model, user_model.input_fn(ModeKeys.EVAL))
    return out
