"""`make demo`: MovieLens-100K on 2 PS shards + 2 asynchronous workers, all local processes.

Prepares (downloads once, then re-uses the cached copy) the data, trains for a few epochs, evaluates
test AUC on the chief, checkpoints, prints the run summary, then exports the model, serves it and
prints one prediction made through a TF Serving client stub.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path

from services import role_logging
from worker.models.movielens_data import default_cache_dir, load_movielens

log = logging.getLogger(__name__)
MODEL = "worker.models.movielens:MovieRankingModel"


class MetricsURLCollector:
    """Passes the cluster's merged output through and remembers each role's Prometheus URL."""

    _URL = re.compile(r"^\[(\w+:\d+)\] .*serving metrics at (http://\S+)")

    def __init__(self, out) -> None:
        self.out = out
        self.urls: dict[str, str] = {}
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        match = self._URL.match(text)
        if match:
            with self._lock:
                self.urls[match.group(1)] = match.group(2)
        self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def launch(num_ps: int, num_workers: int, model: str, model_dir: str, train_args: list[str], out) -> int:
    from launch.local_cluster import run_local_cluster

    return run_local_cluster(num_ps, num_workers, model, model_dir, train_args=train_args, out=out, metrics=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-ps", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--staleness", type=int, default=1)
    parser.add_argument("--model-dir", default=None, help="default: data/demo/run-<time>")
    args = parser.parse_args(argv)
    role_logging.configure("demo", 0)

    data = load_movielens()
    train, test = data.split(0.8)
    print(f"MovieLens-100K: {data.size} ratings ({train.size} train / {test.size} test by time), "
          f"vocabularies {data.vocab_sizes}; cached in {default_cache_dir()}", flush=True)
    model_dir = args.model_dir or str(Path(default_cache_dir()).parent / "demo" / time.strftime("run-%Y%m%d-%H%M%S"))
    os.makedirs(model_dir, exist_ok=True)
    summary_file = os.path.join(model_dir, "summary.json")
    steps = int(args.epochs * -(-train.size // args.batch_size))
    train_args = ["--max-steps", str(steps), "--batch-size", str(args.batch_size), "--staleness", str(args.staleness),
                  "--save-checkpoints-steps", str(max(steps // 3, 1)), "--eval", "--summary-file", summary_file]
    print(f"training {args.epochs:g} epochs = {steps} global steps of {args.batch_size} on {args.num_ps} PS x "
          f"{args.num_workers} workers (staleness {args.staleness}); model dir {model_dir}", flush=True)
    started = time.perf_counter()
    output = MetricsURLCollector(sys.stdout)
    code = launch(args.num_ps, args.num_workers, MODEL, model_dir, train_args, output)
    if code != 0 or not os.path.exists(summary_file):
        print(f"demo failed (exit code {code}); see the worker logs above", file=sys.stderr)
        return code or 1
    with open(summary_file) as fh:
        summary = json.load(fh)
    print("\n=== MovieLens demo summary ===")
    print(f"test AUC            {', '.join(f'{h}={v:.4f}' for h, v in summary['auc'].items())}")
    print(f"examples/s          {summary['examples_per_sec']:.0f} (cluster), "
          f"{summary['worker_examples_per_sec']:.0f} (chief alone)")
    print(f"global step         {summary['global_step']} (chief ran {summary['steps']} of them)")
    print(f"table sizes         {summary['table_sizes']}")
    print(f"checkpoint          {summary['checkpoint']}")
    print(f"summary file        {summary_file}")
    for role, url in sorted(output.urls.items()):
        print(f"metrics {role:<11} {url} (served while the job ran)")
    print(f"wall time           {time.perf_counter() - started:.1f}s")
    from launch.serving_demo import export_and_serve

    return export_and_serve(MODEL, model_dir)


if __name__ == "__main__":
    sys.exit(main())
