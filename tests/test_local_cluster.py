"""`monolith local`: a failing worker stops the whole cluster, named, with a non-zero exit; Ctrl-C too
(tests/test_local_serve.py, with the serving processes of `--serve`); nothing is left running either way."""
from __future__ import annotations

import os
import re
import signal

import pytest

from tests import cluster_parts
from tests.processes import wait_for

cluster_parts.require()

pytestmark = pytest.mark.slow

MODEL = "worker.models.ffm:TestFFMModel"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its (dying) parent counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def pids_in(log: str) -> set[int]:
    return {int(p) for p in re.findall(r"\(pid (\d+)", log)}


def start_local(processes, tmp_path, num_workers: int, steps: int):
    return processes.start(["-m", "launch.cli", "local", "--num-ps", "1", "--num-workers", str(num_workers),
                            "--model", MODEL, "--model-dir", str(tmp_path / "model"), "--max-steps", str(steps)],
                           name="local")


def test_killing_a_worker_stops_the_cluster_and_names_it(processes, tmp_path):
    local = start_local(processes, tmp_path, num_workers=2, steps=1_000_000)
    pattern = re.compile(r"\[worker:1\] .*started training \(pid (\d+)\)")
    match = wait_for(lambda: pattern.search(processes.log_of(local)), 120, what="worker:1 training")
    trainer = int(match.group(1))
    stepping = re.compile(r"\[worker:1\] .*\[worker:1\] .*\bstep \d+")  # the trainer's own progress line
    wait_for(lambda: stepping.search(processes.log_of(local)) or local.poll() is not None, 120,
             what="worker:1 in its training loop")
    assert local.poll() is None, processes.log_of(local)
    os.kill(trainer, signal.SIGKILL)
    assert local.wait(90) != 0
    log = processes.log_of(local)
    assert re.search(r"worker:1 failed \(exit code 137\): stopping the cluster", log), log
    leftovers = [p for p in pids_in(log) if alive(p)]
    assert not leftovers, f"orphans left behind: {leftovers}"


def test_run_local_cluster_api_with_the_data_service(tmp_path):
    """The Python entry point the demo uses: prefixed output, metrics on, every process exits 0; the demo's
    URL collector sees each role's metrics URL, and the PS answers on it while the job runs."""
    import io
    import urllib.request

    from launch.demo import MetricsURLCollector
    from launch.local_cluster import run_local_cluster

    scraped: dict[str, str] = {}

    class ScrapingCollector(MetricsURLCollector):
        def write(self, text: str) -> None:
            super().write(text)
            url = self.urls.get("ps:0")
            if url and "ps:0" not in scraped:
                with urllib.request.urlopen(url, timeout=10) as response:
                    scraped["ps:0"] = response.read().decode()

    out = ScrapingCollector(io.StringIO())
    code = run_local_cluster(1, 1, MODEL, str(tmp_path / "model"), ["--max-steps", "10"], dataservice=True,
                             num_dsworkers=1, out=out, metrics=True)
    log = out.out.getvalue()
    assert code == 0, log
    for prefix in ("[ps:0] ", "[worker:0] ", "[dispatcher:0] ", "[dsworker:0] "):
        assert prefix in log
    for role in ("ps", "worker"):  # `metrics=True`: both serve Prometheus metrics
        assert re.search(rf"\[{role}:0\] .*started .*--metrics-port 0", log), log
    assert set(out.urls) == {"ps:0", "worker:0"}, out.urls
    assert "monolith_ps_table_rows" in scraped["ps:0"]
    assert re.search(r"\[worker:0\] .*started training as the chief .* --dispatcher grpc://127\.0\.0\.1:\d+", log)
    leftovers = [p for p in pids_in(log) if alive(p)]
    assert not leftovers, f"orphans left behind: {leftovers}"


def test_a_killed_launcher_leaves_no_orphans(processes, tmp_path):
    """SIGKILL gives `monolith local` no chance to clean up: the kernel's parent-death signal does it."""
    local = start_local(processes, tmp_path, num_workers=1, steps=1_000_000)
    wait_for(lambda: "started training" in processes.log_of(local), 120, what="training start")
    pids = pids_in(processes.log_of(local))
    assert len(pids) >= 4  # two launchers (ps, worker) and their ps / trainer children
    os.kill(local.pid, signal.SIGKILL)
    local.wait(10)
    try:
        wait_for(lambda: not [p for p in pids if alive(p)], 60, what="every child of the killed launcher to exit")
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
