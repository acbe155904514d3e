"""Compare benchmarks between two git revisions of this repository: did a change make anything slower?

A benchmark's own peer ratio cannot answer that on a shared machine (the peer runs in a pass of its own, so
load that lands on one side moves the ratio), and two runs an hour apart cannot either. This runs the same
benchmark script from both revisions alternately (old, new, old, new, ...), each in a checkout of its own
with its own numba cache, in this venv, and prints for every row of the benchmark's table the median of
its first figure per revision and new/old. In store_bench and ps_bench that figure is a rate (higher is
better), so new/old < 1 is a slowdown; ps_bench's payload-size rows only show that the workload is the
same. Each revision runs its own benchmark script, so a row whose benchmark code changed between the
revisions compares the two benchmarks as well as the two stores.

Run: `python benchmarks/revision_ab.py --old d17a31b [--new HEAD] [--runs 3] store_bench.py [ps_bench.py]`
(each with its defaults); `python benchmarks/write_results.py revision_ab.py -- --old ...` records the
comparison in RESULTS.md. The checkouts are detached `git worktree`s in a temporary directory, removed
afterwards.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# "label   12.34 ..." or "label   1,234.5 ...": a row label (two spaces at least before the figure).
_ROW = re.compile(r"^\s*([A-Za-z][^\n]*?)\s{2,}([\d,]+(?:\.\d+)?)x?(?:\s|$)")


def parse_rows(text: str) -> dict[str, float]:
    """The first figure of each table row of a benchmark's output, by label (the first occurrence wins)."""
    rows: dict[str, float] = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m and not line.lstrip().startswith(("WARNING", "I0000")):
            rows.setdefault(m.group(1).strip(), float(m.group(2).replace(",", "")))
    return rows


def _checkout(rev: str, where: Path) -> Path:
    """A detached worktree of `rev` with its protos compiled (generated code is not in git)."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(where), rev], check=True)
    protos = sorted(p.name for p in (where / "protos").glob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", ".", "--python_out=.",
                    "--grpc_python_out=.", *[f"protos/{p}" for p in protos]], cwd=where, check=True)
    return where


def _run(tree: Path, script: str, args: list[str]) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree), NUMBA_CACHE_DIR=str(tree / ".cache" / "numba"),
               TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, str(tree / "benchmarks" / script), *args], cwd=tree, env=env,
                         capture_output=True, text=True, check=True).stdout
    return parse_rows(out)


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the earlier revision (any git revision name)")
    parser.add_argument("--new", default="HEAD", help="the later revision (default HEAD)")
    parser.add_argument("--runs", type=int, default=3, help="runs per revision, alternated (default 3)")
    parser.add_argument("scripts", nargs="+", help="scripts in benchmarks/, e.g. store_bench.py ps_bench.py")
    ns = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="revision_ab-") as tmp:
        trees = {side: _checkout(rev, Path(tmp) / side) for side, rev in (("old", ns.old), ("new", ns.new))}
        try:
            for script in ns.scripts:
                _compare(script, trees, ns)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    return 0


def _compare(script: str, trees: dict[str, Path], ns: argparse.Namespace) -> None:
    results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for i in range(ns.runs):
        for side in ("old", "new"):
            print(f"{script} run {i + 1}/{ns.runs} {side} ({getattr(ns, side)}), load {_load()}", flush=True)
            results[side].append(_run(trees[side], script, []))
    print(f"\n{script}: median of {ns.runs} alternated runs per revision; load at the end {_load()}")
    print(f"{'row':48s} {ns.old[:12]:>12s} {ns.new[:12]:>12s} {'new/old':>8s}")
    for label in results["new"][0]:
        old = [r[label] for r in results["old"] if label in r]
        new = [r[label] for r in results["new"] if label in r]
        if old and new:
            m_old, m_new = statistics.median(old), statistics.median(new)
            ratio = f"{m_new / m_old:8.2f}" if m_old else "       -"
            print(f"{label[:48]:48s} {m_old:12.2f} {m_new:12.2f} {ratio}")
    print(flush=True)


if __name__ == "__main__":
    sys.exit(main())
