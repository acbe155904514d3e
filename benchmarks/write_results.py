"""`make bench`: run every `benchmarks/*_bench.py` and write their output to `benchmarks/RESULTS.md`.

Each benchmark compares us with a named peer measured in the same run and prints the ratios; this file
keeps the figures of each benchmark's last run (with its commit, date, arguments and the machine's load
before and after it, since other jobs may share the cores) so docstrings never need to quote them. Naming
benchmarks re-runs only those: the other sections stay as they were.
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _with(args: list[str]) -> str:
    return f" (with {' '.join(args)})" if args else ""


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, check=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_one(path: Path, args: list[str]) -> tuple[str, str, int]:
    """(output, load before/after, exit code) of one benchmark; its output also streams to this terminal.

    Only stdout is kept: stderr carries library chatter (TensorFlow's start-up lines, Keras warnings with
    this machine's paths), which goes to the terminal only."""
    before = _load()
    proc = subprocess.Popen([sys.executable, str(path), *args], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    code = proc.wait()
    return "".join(lines), f"{before} → {_load()}", code


def _sections(text: str) -> dict[str, str]:
    """The `## name` sections of a RESULTS.md, by benchmark name."""
    parts = text.split("\n## ")[1:]
    return {part.split("\n", 1)[0].strip(): "## " + part.rstrip() + "\n" for part in parts}


def main() -> int:
    """`python benchmarks/write_results.py [name.py ... [-- args]]`: every `*_bench.py`, or only the named
    scripts (with `args`, e.g. a shorter setting, when one is named)."""
    argv = sys.argv[1:]
    names, args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    # A named script need not be a *_bench.py: `revision_ab.py` (an A/B of two revisions) runs only when named.
    benches = ([HERE / n for n in names if (HERE / n).is_file() and n.endswith(".py")] if names
               else sorted(HERE.glob("*_bench.py")))
    if names and len(benches) != len(names):
        print(f"unknown benchmarks among {names}", file=sys.stderr)
        return 2
    results = HERE / "RESULTS.md"
    sections = _sections(results.read_text()) if results.exists() else {}
    if not names:  # a full run replaces every *_bench.py section; a named-only script's section stays
        sections = {name: text for name, text in sections.items() if not name.endswith("_bench.py")}
    failed = []
    for path in benches:
        print(f"== {path.name}", flush=True)
        output, load, code = run_one(path, args)
        if code:
            failed.append(path.name)
        sections[path.name] = (
            f"## {path.name}\n\nRun at commit {_commit()}, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
            f"{_with(args)}; load average (1, 5, 15 min) before → after: {load}"
            f"{'' if code == 0 else f'; FAILED with exit code {code}'}\n\n```\n{output.rstrip()}\n```\n")
    header = (f"# Benchmark results\n\nWritten by `make bench` (`benchmarks/write_results.py`); do not edit by hand.\n"
              f"{platform.machine()} with {os.cpu_count()} CPUs, Python {platform.python_version()}.\n"
              f"Every ratio compares figures measured in the same run; absolute rates depend on the machine's load.\n")
    results.write_text(header + "\n" + "\n".join(sections[name] for name in sorted(sections)))
    print(f"wrote {results}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
