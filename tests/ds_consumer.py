"""A tf.data service consumer process for the exactly-once test: reads example ids, writes them out.

Each epoch is one data-service job (`<job>-e<k>`) shared by every consumer; a file barrier makes all
consumers start reading together so the epoch is really split between them.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from services.mlp_env import check_port, split_addr


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--service", required=True)
    p.add_argument("--wait-for", default="", help="comma-separated host:port that must be up first")
    p.add_argument("--job-name", required=True)
    p.add_argument("--examples", type=int, required=True)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--consumers", type=int, required=True)
    p.add_argument("--barrier-dir", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    for addr in filter(None, args.wait_for.split(",")):
        if not check_port(*split_addr(addr), timeout=120):
            print(f"{addr} did not come up", file=sys.stderr)
            return 1

    import tensorflow as tf

    from dispatcher.data_service import distribute

    barrier = Path(args.barrier_dir)
    with open(args.out, "w") as out:
        for epoch in range(args.epochs):
            (barrier / f"e{epoch}-c{args.index}").touch()
            while len(list(barrier.glob(f"e{epoch}-c*"))) < args.consumers:
                time.sleep(0.05)
            ds = tf.data.Dataset.range(args.examples).map(
                lambda i: {"example_id": i, "x": tf.cast(i, tf.float32) * 2.0})
            ds = distribute(ds, args.service, f"{args.job_name}-e{epoch}")
            for batch in ds:
                assert float(batch["x"]) == 2.0 * int(batch["example_id"])
                out.write(f"{epoch} {int(batch['example_id'])}\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
