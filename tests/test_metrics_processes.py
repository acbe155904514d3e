"""Role processes serve metrics over HTTP; a real Prometheus scrapes them; the exit hook counts signals."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.parse
import urllib.request

import pytest

from services import exit_hook
from services.ports import free_port
from tests.processes import wait_for
from tests.scrape import Scrape, scrape

pytestmark = pytest.mark.slow


def _port_of(group, proc) -> int:
    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"target exited {proc.returncode}:\n{group.log_of(proc)}")
        for line in group.log_of(proc).splitlines():
            if line.startswith("METRICS_PORT "):
                return int(line.split()[1])
        return None
    return wait_for(ready, timeout=30, what="METRICS_PORT line")


def _start_target(group, *args, env=None):
    proc = group.start(["-m", "tests.metrics_target", *args], env=env, name="metrics-target")
    return proc, _port_of(group, proc)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_is_counted_at_exit(processes, tmp_path, sig):
    textfile = tmp_path / "ps1.prom"
    proc, port = _start_target(processes, "--role", "ps", "--index", "1", "--exit-hook",
                               env={"MONOLITH_METRICS_TEXTFILE": str(textfile)})
    live = scrape(port)
    assert live.value("monolith_training_target_requests_total", role="ps", index="1") == 3
    assert live.value("monolith_training_exit_hook_total", server_type="ps", index="1", sig=int(sig)) is None
    assert processes.stop(proc, sig) == 128 + sig
    exported = Scrape(textfile.read_text())
    assert exported.value("monolith_training_exit_hook_total", server_type="ps", index="1", sig=int(sig)) == 1
    assert exported.value("monolith_training_target_requests_total", role="ps", index="1") == 3
    assert "exit_hook emitted" in processes.log_of(proc)


def test_hook_chains_to_a_graceful_handler(processes, tmp_path):
    textfile = tmp_path / "w0.prom"
    proc, _port = _start_target(processes, "--role", "worker", "--index", "0", "--exit-hook", "--chain",
                                env={"MONOLITH_METRICS_TEXTFILE": str(textfile)})
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(20) == 0
    assert f"GRACEFUL {int(signal.SIGHUP)}" in processes.log_of(proc)
    exported = Scrape(textfile.read_text())
    assert exported.value("monolith_training_exit_hook_total", server_type="worker", index="0", sig="1") == 1


def test_no_signal_no_exit_metric(tmp_path):
    textfile = tmp_path / "clean.prom"
    code = ("from services import exit_hook; from services.metrics import get_cli; "
            "exit_hook.install('ps', 2); get_cli().emit_counter('clean.exit', 1); get_cli().flush()")
    env = {**os.environ, "MONOLITH_METRICS_TEXTFILE": str(textfile)}
    env.setdefault("PYTHONPATH", os.getcwd())
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    text = textfile.read_text()
    assert "monolith_training_clean_exit_total 1.0" in text
    assert "exit_hook" not in text


def test_install_outside_main_thread_is_refused():
    errors = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, exit_hook.install, "ps", 0)))
    t.start()
    t.join()
    assert "main thread" in str(errors[0].value)


PROMETHEUS = shutil.which("prometheus")


def _worker_metrics_port(group, proc) -> int:
    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited {proc.returncode}:\n{group.log_of(proc)[-3000:]}")
        m = re.search(r"serving metrics at http://127\.0\.0\.1:(\d+)/metrics", group.log_of(proc))
        return int(m.group(1)) if m else None
    return wait_for(ready, timeout=120, what="the worker's metrics server")


@pytest.mark.skipif(PROMETHEUS is None, reason="the `prometheus` binary is not installed (make prometheus-server)")
def test_prometheus_scrapes_a_ps_and_a_training_worker(processes, tmp_path):
    from tests.cluster_parts import require

    require("ps.__main__", "worker.train_main")
    from tests.ps_cluster import start_shard, wait_ready

    # ports chosen up front so Prometheus starts while the PS and the worker import TensorFlow
    ps_metrics, worker_metrics, api_port = (f"127.0.0.1:{free_port()}" for _ in range(3))
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: ps\n    static_configs:\n      - targets: ['{ps_metrics}']\n"
        f"  - job_name: worker\n    static_configs:\n      - targets: ['{worker_metrics}']\n"
    )
    prom = processes.start(
        ["-c", "import os, sys; os.execv(sys.argv[1], sys.argv[1:])", PROMETHEUS,
         f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address={api_port}"],
        name="prometheus",
    )
    shard = wait_ready(processes, start_shard(processes, 0, 1, extra=["--metrics-port", ps_metrics.split(":")[1]]))
    assert shard.metrics == ps_metrics
    worker = processes.start(
        ["-m", "launch.cli", "train", "--model", "tests.tiny_models:TinyDNN", "--ps", shard.address,
         "--model-dir", str(tmp_path / "model"), "--max-steps", "1000000",
         "--metrics-port", worker_metrics.split(":")[1]], name="worker0")
    assert f"127.0.0.1:{_worker_metrics_port(processes, worker)}" == worker_metrics

    def query(expr):
        for p, what in ((prom, "prometheus"), (worker, "worker"), (shard.proc, "ps")):
            if p.poll() is not None:
                raise AssertionError(f"{what} exited {p.returncode}:\n{processes.log_of(p)[-3000:]}")
        url = f"http://{api_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = json.loads(resp.read())
        except OSError:
            return None
        assert body["status"] == "success", body
        return body["data"]["result"] or None

    def sample(expr):
        return wait_for(lambda: query(expr), timeout=90, interval=0.5, what=f"prometheus to return {expr}")

    up = wait_for(lambda: (r := query("up == 1")) and len(r) == 2 and r, timeout=90, interval=0.5,
                  what="both targets up")
    assert {r["metric"]["instance"] for r in up} == {ps_metrics, worker_metrics}
    loss = sample('monolith_training_step_loss{job="worker"}')
    assert loss[0]["metric"]["instance"] == worker_metrics
    assert 0 < float(loss[0]["value"][1]) < 1e6
    lookups = sample('sum(monolith_ps_requests_total{job="ps", code="OK"}) > 0')
    assert float(lookups[0]["value"][1]) > 0
    rows = sample('sum(monolith_ps_table_rows{job="ps"}) > 0')
    assert float(rows[0]["value"][1]) > 0
    steps = sample('monolith_training_run_steps_all_total{job="worker", model_name="TinyDNN"}')
    assert float(steps[0]["value"][1]) > 0
    live = scrape(int(worker_metrics.split(":")[1]))
    assert live.value("monolith_training_run_steps_all_total", model_name="TinyDNN", cluster_type="stable") >= \
        float(steps[0]["value"][1])
