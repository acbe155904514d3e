"""Training throughput (examples/s) of the MovieLens model: local mode, 1 PS x 1 worker, 2 PS x 2 workers,
and the plain Keras peer, in one run with the same batch size; prints ratios.

The cluster figures are the chief's estimate of cluster throughput (global steps x batch / its train time,
after tracing). Everything shares 2 cores here, so more processes do not mean more compute.
    python benchmarks/train_bench.py [--steps 800] [--batch-size 256]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from movielens_runs import run_cluster, run_keras, run_local  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--staleness", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runs = [("plain keras", lambda: run_keras(args.steps, args.batch_size, evaluate=False)),
            ("local", lambda: run_local(args.steps, args.batch_size, evaluate=False)),
            ("1ps x 1w", lambda: run_cluster(1, 1, args.steps, args.batch_size, False, args.staleness)),
            ("2ps x 2w", lambda: run_cluster(2, 2, args.steps, args.batch_size, False, args.staleness))]
    rates = {}
    print(f"MovieLens model, {args.steps} steps of batch {args.batch_size}, staleness {args.staleness}", flush=True)
    for name, fn in runs:
        rates[name] = fn()["examples_per_sec"]
        print(f"  {name:12s} {rates[name]:9.0f} examples/s", flush=True)
    print("ratios:")
    for name in ("local", "1ps x 1w", "2ps x 2w"):
        print(f"  {name:12s} / plain keras = {rates[name] / rates['plain keras']:.2f}")
    for name in ("1ps x 1w", "2ps x 2w"):
        print(f"  {name:12s} / local       = {rates[name] / rates['local']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
