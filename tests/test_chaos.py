"""A job survives random crashes on its own: MovieLens on 2 PS x 2 workers under `monolith local
--restart-failed`, checkpointing every 2 s, while this test SIGKILLs a training process and then random PS
shards at random (seeded) times, 5 kills across both kinds. The job must reach `max_steps`, exit 0, and
evaluate within 0.01 AUC of an undisturbed run of the same seed, run beside it (over mutual TLS with a
token, so `monolith local` is covered end to end with transport security too).

The report printed at the end (kills, recovery times, lost steps, AUC delta) is what README's reliability
section quotes. A PS kill loses the updates its shard took since the last complete checkpoint; a worker
kill loses at most the step it had in flight.
"""
from __future__ import annotations

import datetime
import json
import os
import random
import re
import signal
import time
from dataclasses import dataclass

import pytest

from ps.client import PSClient
from ps.errors import PSError
from ps.persist.checkpoint import complete_checkpoints
from tests import cluster_parts
from tests.processes import wait_for
from tests.throwaway_ca import ThrowawayCA

cluster_parts.require()

pytestmark = pytest.mark.slow

MODEL = "tests.chaos_model:ChaosMovieModel"
MAX_STEPS = 700
SEED = 1606
KILLS = 5
RESTARTS = 5  # per role: more than this test's kills of any one role
AUC_TOLERANCE = 0.01
JOB_TIMEOUT_S = 420

_STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"


def _stamp(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


@dataclass
class Kill:
    victim: str  # "ps:1", "worker:0"
    pid: int
    at: float  # wall clock
    global_step: int  # the job's global step last seen before it (shard 0 may be down)
    checkpoint_step: int  # the latest complete checkpoint then
    recovered_s: float | None = None

    @property
    def lost_steps(self) -> int:
        """Updates this kill may have lost: a shard's since the last complete checkpoint, a worker's in flight."""
        return 1 if self.victim.startswith("worker") else max(0, self.global_step - self.checkpoint_step)


class ClusterLog:
    """What the `monolith local` log says about each role's current process."""

    def __init__(self, processes, proc) -> None:
        self.processes, self.proc = processes, proc

    def text(self) -> str:
        return self.processes.log_of(self.proc)

    @staticmethod
    def _started(text: str, role: str, index: int) -> list[int]:
        what = rf"started {role}:{index}" if role == "ps" else r"started training(?: as the chief)?"
        return [int(p) for p in re.findall(rf"\[{role}:{index}\] .*launch\.run_role: {what} \(pid (\d+)\)", text)]

    @staticmethod
    def _ready(text: str, role: str, index: int) -> list[tuple[float, str]]:
        what = rf"ps\.server: ready: ps shard {index} of" if role == "ps" else r"training from global step"
        return [(_stamp(m.group(1)), m.group(0)) for m in re.finditer(rf"\[{role}:{index}\] {_STAMP} .*{what}.*", text)]

    def current(self, text: str, role: str, index: int) -> int | None:
        """The pid of `role:index`'s serving (or training) process when its latest start is ready, else None."""
        started, ready = self._started(text, role, index), self._ready(text, role, index)
        if not started or len(ready) < len(started):
            return None
        return started[-1]

    def recovered_at(self, text: str, role: str, index: int, after: float) -> tuple[float, str] | None:
        """The first readiness line of `role:index` logged after `after` (wall clock)."""
        return next((r for r in self._ready(text, role, index) if r[0] > after), None)

    def ps_addresses(self, text: str) -> list[str]:
        found = dict(re.findall(r"ready: ps shard (\d) of 2 serving on (\S+) ", text))
        return [found[str(i)] for i in range(2)] if len(found) == 2 else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_job(processes, model_dir, extra: list[str]):
    return processes.start(
        ["-m", "launch.cli", "local", "--num-ps", "2", "--num-workers", "2", "--model", MODEL,
         "--model-dir", str(model_dir), "--max-steps", str(MAX_STEPS), *extra, "--",
         "--eval", "--save-checkpoints-secs", "2", "--summary-file", str(model_dir / "summary.json")],
        name=model_dir.name)


def _global_step(client: PSClient | None) -> int | None:
    if client is None:
        return None
    try:
        return client.global_step()
    except PSError:
        return None


def _chaos(log: ClusterLog, model_dir, rng: random.Random) -> list[Kill]:
    """SIGKILL `KILLS` processes (both kinds, order and timing from `rng`) while the job trains."""
    # a worker restart costs a TensorFlow start: kill one first, so it comes back while the shards are killed
    kinds = ["worker", *["ps"] * (KILLS - 1)]
    wait_for(lambda: complete_checkpoints(model_dir), 300, interval=0.2, what="the first complete checkpoint")
    client = PSClient(log.ps_addresses(log.text()), retries=0, timeout_s=1.0)
    kills: list[Kill] = []
    last_step = 0
    try:
        for kind in kinds:
            pause_until = time.monotonic() + rng.uniform(1.0, 2.5)
            deadline = pause_until + 120
            while True:  # a victim of this kind whose latest process is up (and the job not about to end)
                step = _global_step(client)
                last_step = last_step if step is None else step
                if time.monotonic() < pause_until:
                    time.sleep(0.2)
                    continue
                assert last_step < MAX_STEPS - 20, f"training ended after only {len(kills)} kills: {kills}"
                text = log.text()
                candidates = [(i, pid) for i in rng.sample(range(2), 2)
                              if (pid := log.current(text, kind, i)) is not None and _alive(pid)]
                if candidates:
                    break
                assert time.monotonic() < deadline, f"no {kind} up to kill for 120 s"
                time.sleep(0.2)
            index, pid = candidates[0]
            checkpoints = complete_checkpoints(model_dir)
            os.kill(pid, signal.SIGKILL)
            kills.append(Kill(f"{kind}:{index}", pid, time.time(), last_step, checkpoints[-1][0] if checkpoints else 0))
    finally:
        client.close()
    return kills


def _summary(model_dir) -> dict:
    return json.loads((model_dir / "summary.json").read_text())


@pytest.mark.timeout(2 * JOB_TIMEOUT_S)  # two jobs side by side, one restarting its processes
def test_job_survives_random_kills_with_nothing_but_uncheckpointed_updates_lost(processes, tmp_path):
    ca = ThrowawayCA(tmp_path / "pki")
    issued = ca.issue("monolith")
    token = tmp_path / "token"
    token.write_text("chaos-token\n")
    baseline = _start_job(processes, tmp_path / "undisturbed",
                          ["--tls-cert", issued.cert, "--tls-key", issued.key, "--tls-ca", ca.cert,
                           "--auth-token-file", str(token)])
    chaos = _start_job(processes, tmp_path / "chaos", ["--restart-failed", str(RESTARTS)])
    started = time.monotonic()
    log = ClusterLog(processes, chaos)
    kills = _chaos(log, tmp_path / "chaos", random.Random(SEED))
    assert chaos.wait(JOB_TIMEOUT_S) == 0, log.text()[-5000:]
    chaos_s = time.monotonic() - started
    assert baseline.wait(JOB_TIMEOUT_S) == 0, processes.log_of(baseline)[-5000:]

    text = log.text()
    for kill in kills:
        role, index = kill.victim.split(":")
        recovered = log.recovered_at(text, role, int(index), kill.at)
        if recovered is not None:
            kill.recovered_s = recovered[0] - kill.at
            if role == "ps":  # a restarted shard restores its part of a complete checkpoint
                assert "restored=-" not in recovered[1], recovered[1]
    assert len(kills) >= KILLS and {k.victim.split(":")[0] for k in kills} == {"ps", "worker"}
    assert all(k.recovered_s is not None for k in kills if k.victim.startswith("ps")), kills

    calm, stormy = _summary(tmp_path / "undisturbed"), _summary(tmp_path / "chaos")
    assert calm["global_step"] == stormy["global_step"] == MAX_STEPS
    delta = stormy["eval"]["ctr_auc"] - calm["eval"]["ctr_auc"]
    baseline_log = processes.log_of(baseline)
    assert baseline_log.count("transport=mutual TLS+token") == 2, "the undisturbed run's shards were not on TLS"
    print(f"\nchaos: {len(kills)} kills survived in {chaos_s:.0f} s; restarts: {text.count('restarting it')}")
    for k in kills:
        recovered = "not back before the end" if k.recovered_s is None else f"recovered in {k.recovered_s:.1f} s"
        print(f"  {k.victim:9s} pid {k.pid}: global step {k.global_step}, checkpoint {k.checkpoint_step}, "
              f"lost <= {k.lost_steps} steps, {recovered}")
    print(f"  AUC undisturbed {calm['eval']['ctr_auc']:.4f}, chaos {stormy['eval']['ctr_auc']:.4f}, delta {delta:+.4f}")
    assert abs(delta) <= AUC_TOLERANCE
