"""Training speed of MovieLens models against plain Keras `fit` and TF's ParameterServerStrategy, one run.

Two models: the demo (`worker.models.movielens`) and one written from the README alone
(`movielens_readme_model.py`). Each is trained in local mode, on 1 PS x 1 worker and on 2 PS x 1 worker
(`monolith local`, separate processes on loopback), beside the plain Keras 3 `model.fit` peer
(`movielens_keras.py`, the same architecture on the same input) and TF ParameterServerStrategy with
tf_keras, 2 PS x 1 worker (`pss_peer.py`; needs `make bench-deps`, else it is left out). Every
configuration is timed after its first (tracing) step with every update applied; the configurations are
interleaved, round after round, and the medians printed with ratios. Our runs also print where a step's
time goes (`worker/runtime/step_timing.py`: milliseconds per step per phase, medians) and test AUC
(mean ± sd over the rounds). Everything shares the machine's cores: more processes mean no more compute.
    python benchmarks/train_bench.py [--steps 150] [--rounds 3] [--batch-sizes 256,1024] [--models demo,readme]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

from movielens_runs import run_cluster, run_keras, run_local  # noqa: E402

from worker.runtime.step_timing import PHASES  # noqa: E402

CONFIGS = ("keras fit", "local", "1ps x 1w", "2ps x 1w", "tf pss 2ps x 1w")
OURS = ("local", "1ps x 1w", "2ps x 1w")


def _pss(model: str, batch_size: int, steps: int) -> dict:
    cmd = [sys.executable, os.path.join(HERE, "pss_peer.py"), "--json", "--model", model, "--batch-size",
           str(batch_size), "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"pss_peer.py failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def _have_tf_keras() -> bool:
    try:
        import tf_keras  # noqa: F401
    except ImportError:
        return False
    return True


def run_one(config: str, model: str, batch_size: int, steps: int, staleness: int, evaluate: bool) -> dict:
    if config == "keras fit":
        return run_keras(steps, batch_size, evaluate, model=model)
    if config == "local":
        return run_local(steps, batch_size, evaluate, model=model)
    if config == "tf pss 2ps x 1w":
        return _pss(model, batch_size, steps)
    num_ps = int(config[0])
    return run_cluster(num_ps, 1, steps, batch_size, evaluate, staleness, model=model)


def _table(model: str, results: dict, batch_sizes: list[int], configs: list[str]) -> list[str]:
    med = {(c, b): statistics.median(r["ms_per_step"] for r in results[c, b]) for c in configs for b in batch_sizes
           if results.get((c, b))}
    head = "| configuration |" + "".join(f" batch {b} ms/step | examples/s | ÷ Keras | ÷ PSS |" for b in batch_sizes)
    lines = [f"{model} model (medians):", "", head, "|---|" + "---:|" * 4 * len(batch_sizes)]
    for c in configs:
        row = f"| {c} |"
        for b in batch_sizes:
            ms = med.get((c, b))
            if ms is None:
                row += " – | – | – | – |"
                continue
            ratios = [f"×{med[peer, b] / ms:.2f}" if (peer, b) in med else "–" for peer in ("keras fit", CONFIGS[-1])]
            row += f" {ms:.2f} | {1000 * b / ms:.0f} | {ratios[0]} | {ratios[1]} |"
        lines.append(row)
    return lines


def _breakdown(results: dict, batch_sizes: list[int]) -> list[str]:
    phases = [*PHASES, "step"]
    lines = ["step-time breakdown, ms/step (medians; prefetch/push threads overlap the training thread):", "",
             "| configuration | batch | " + " | ".join(phases) + " |", "|---|---:|" + "---:|" * len(phases)]
    for c in OURS:
        for b in batch_sizes:
            runs = [r["step_ms"] for r in results.get((c, b), []) if r.get("step_ms")]
            if runs:
                cells = [f"{statistics.median(r.get(p, 0.0) for r in runs):.2f}" for p in phases]
                lines.append(f"| {c} | {b} | " + " | ".join(cells) + " |")
    return lines


def _auc(results: dict, batch_sizes: list[int], configs: list[str]) -> list[str]:
    lines = ["test AUC after training (mean ± sd over the rounds):"]
    for b in batch_sizes:
        cells = []
        for c in configs:
            aucs = [r["auc"] for r in results.get((c, b), []) if "auc" in r]
            if aucs:
                sd = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
                cells.append(f"{c} {statistics.mean(aucs):.4f} ± {sd:.4f}")
        lines.append(f"  batch {b}: " + "; ".join(cells))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150, help="timed steps per run (after the first)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", default="256,1024")
    parser.add_argument("--models", default="demo,readme")
    parser.add_argument("--staleness", type=int, default=1)
    parser.add_argument("--no-eval", action="store_true", help="skip test AUC")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    configs = [c for c in CONFIGS if c in args.configs.split(",")]
    if "tf pss 2ps x 1w" in configs and not _have_tf_keras():
        print("tf_keras is not installed (make bench-deps): TF ParameterServerStrategy left out")
        configs.remove("tf pss 2ps x 1w")
    print(f"{args.steps} timed steps per run, {args.rounds} interleaved rounds, staleness {args.staleness} on "
          f"PS clusters; the machine's cores are shared by every process", flush=True)
    for model in args.models.split(","):
        results: dict = {}
        for r in range(args.rounds):
            for b in batch_sizes:
                for c in configs:
                    out = run_one(c, model, b, args.steps, args.staleness, not args.no_eval)
                    results.setdefault((c, b), []).append(out)
                    auc = f", AUC {out['auc']:.4f}" if "auc" in out else ""
                    print(f"  [{model} round {r + 1}] {c:16s} batch {b:5d}: {out['ms_per_step']:7.2f} ms/step"
                          f"{auc}", flush=True)
        print("\n" + "\n".join(_table(model, results, batch_sizes, configs)) + "\n", flush=True)
        print("\n".join(_breakdown(results, batch_sizes)) + "\n", flush=True)
        if not args.no_eval:
            print("\n".join(_auc(results, batch_sizes, [c for c in configs if c != "tf pss 2ps x 1w"])) + "\n",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
