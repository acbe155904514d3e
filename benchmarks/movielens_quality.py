"""MovieLens-100K test AUC: local mode vs 2 PS x 2 workers vs a plain Keras model, in one run.

Done when: |distributed - local| <= 0.01 and |local - plain Keras| <= 0.005 (same architecture, same
vocabularies, same epochs and batch size). Exits 1 if either bound is missed.
    python benchmarks/movielens_quality.py [--epochs 4] [--batch-size 256]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from movielens_runs import run_cluster, run_keras, run_local  # noqa: E402

from worker.models.movielens_data import load_movielens  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    train, _ = load_movielens().split(0.8)
    steps = int(args.epochs * -(-train.size // args.batch_size))
    print(f"MovieLens-100K, {args.epochs:g} epochs = {steps} steps of {args.batch_size}, test = newest 20%", flush=True)
    results = {}
    for name, fn in [("local", lambda: run_local(steps, args.batch_size)),
                     ("2ps x 2w", lambda: run_cluster(2, 2, steps, args.batch_size)),
                     ("plain keras", lambda: run_keras(steps, args.batch_size))]:
        results[name] = fn()
        print(f"  {name:12s} AUC {results[name]['auc']:.4f}  ({results[name]['examples_per_sec']:.0f} examples/s)",
              flush=True)
    d_dist = results["2ps x 2w"]["auc"] - results["local"]["auc"]
    d_keras = results["local"]["auc"] - results["plain keras"]["auc"]
    ok_dist, ok_keras = abs(d_dist) <= 0.01, abs(d_keras) <= 0.005
    print(f"distributed - local  = {d_dist:+.4f}  (bound 0.01)  {'OK' if ok_dist else 'MISSED'}")
    print(f"local - plain keras  = {d_keras:+.4f}  (bound 0.005) {'OK' if ok_keras else 'MISSED'}")
    return 0 if ok_dist and ok_keras else 1


if __name__ == "__main__":
    sys.exit(main())
