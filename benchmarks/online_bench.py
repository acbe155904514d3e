"""Real-time training benchmark: MovieLens-100K streamed in time order through a Kafka-protocol broker
(librdkafka's mock cluster, all in one partition) into `monolith local --serve` (1 training PS, 1 worker, 1
serving PS, the entry); every launch from a fresh model directory and topic:

  sync 1 s, backlog   the first --cost-ratings of the stream: the first 5,000 until serving is up (and, with
                      the sync on, the serving PS has taken a sync round), then the rest, kept 20,000
                      records ahead of training (the mock broker keeps only the newest ~30,000 records of a
                      partition). cost: training examples/s (global step x batch size from 10 steps after
                      that release to 90% of the ratings) with the sync on; in the first of them, then
                      freshness at 1 s for 20 s.
  sync off, backlog   the same with `--sync-interval-s 0`: examples/s with the sync off (the serving
                      processes run in both). --cost-rounds rounds of one launch each, back to back, which
                      goes first alternating; the target is the median of the rounds' on/off ratios.
  sync 10 s, paced    the stream at --rate ratings/s after a warm-up of its first --warmup fraction.
                      quality over time (prequential): just before each next --slice ratings are produced,
                      they are predicted through the serving path: (a) the entry fed by the sync every 10 s;
                      (b) from 50% of the stream on, a frozen copy of the serving path (serving PS + entry)
                      loaded from the export of the checkpoint that holds exactly the first 50% (the stream
                      pauses until it exists): the sync stopped after the first half. freshness at 10 s.
  In (a) and the sync runs the entry takes the dense sync at the row sync's interval and also loads every
  later export (one per checkpoint, --ckpt-s); with the sync off, neither sync runs.

Freshness: a probe thread assigns a new row (table `uid`, ids far beyond the vocabulary) on the training PS
and times until the serving PS returns it (polled every 10 ms): update applied -> row visible.
AUC: a closed form in numpy (Mann-Whitney rank sum, ties averaged), independent of the training code.
Targets: freshness p99 <= interval + 1 s; (a) AUC above (b) on the second half; examples/s with the sync on
>= 0.9 x off. Writes a PNG of the per-slice AUC (--plot, default benchmarks/online_quality.png).

Run: `python benchmarks/online_bench.py` (about 14 min on 2 shared cores; `--cost-rounds 1`: about 5). The
machine may be shared: the ratios are measured in the same run.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MODEL = "worker.models.movielens_stream:MovieLensStreamModel"
BATCH = 256
PROBE_BASE = 10**9
_READY = re.compile(r"ready: serving (?:model \S+ version \d+|ps shard \d+ of \d+ \(.*\)) on [\d.]+:(\d+)")
_PLAN = re.compile(r"to serving PS (\S+); the entry will answer Predict on (\S+) once")
_TRAINING_PS = re.compile(r"ps:0 \(pid \d+, port (\d+)\)")
_ENTRY_READY = re.compile(r"\[serve:0\] .*ready: serving model \S+ version \d+ on")


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney U statistic from average ranks (ties count half)."""
    labels = np.asarray(labels) > 0.5
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), np.float64)
    # average rank of each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# -- processes ---------------------------------------------------------------------------------------
class Procs:
    """Processes this benchmark starts (own sessions, logs in `work`), all stopped by `close`."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], name: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        log = self.work / f"{name}.log"
        full = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=full, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc, log

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                self.stop(p)


def wait_log(proc: subprocess.Popen, log: Path, pattern: re.Pattern, timeout: float = 400) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = pattern.search(log.read_text(errors="replace"))
        if m:
            return m
        if proc.poll() is not None:
            raise RuntimeError(f"{log.name} exited {proc.returncode}:\n" + log.read_text(errors="replace")[-4000:])
        time.sleep(0.1)
    raise TimeoutError(f"{pattern.pattern!r} not in {log.name}:\n" + log.read_text(errors="replace")[-4000:])


def start_broker(procs: Procs) -> str:
    proc, log = procs.start(["-m", "tests.kafka_mock"], "kafka")
    return wait_log(proc, log, re.compile(r"BROKERS (\S+)"), 60).group(1)


def produce(producer, topic: str, records: list[bytes]) -> None:
    """Into partition 0 only, so the worker reads the ratings in time order."""
    for r in records:
        while True:
            try:
                producer.produce(topic, r, partition=0)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)


class Cluster:
    """One `monolith local --serve` launch and its addresses."""

    def __init__(self, procs: Procs, name: str, brokers: str, topic: str, sync_s: float, ckpt_s: float,
                 idle_s: float = 0.0) -> None:
        self.work = procs.work / name
        env = {"MONOLITH_STREAM_BROKERS": brokers, "MONOLITH_STREAM_TOPIC": topic,
               "MONOLITH_STREAM_GROUP": f"trainers-{name}", "MONOLITH_STREAM_API": "2.3.0",
               "MONOLITH_STREAM_BATCH": str(BATCH), "MONOLITH_STREAM_IDLE_S": str(idle_s)}
        self.proc, self.log = procs.start(
            ["-m", "launch.cli", "local", "--num-ps", "1", "--num-workers", "1", "--model", MODEL,
             "--model-dir", str(self.work / "model"), "--serve", "--num-serving-ps", "1", "--sync-interval-s",
             str(sync_s), "--", "--save-checkpoints-secs", str(ckpt_s)], name, env)
        self.procs, self.sync_s = procs, sync_s
        plan = wait_log(self.proc, self.log, _PLAN, 120)
        self.serving, self.entry = plan.group(1).split(","), plan.group(2)
        self.training = "127.0.0.1:" + wait_log(self.proc, self.log, _TRAINING_PS, 60).group(1)

    def wait_serving(self) -> None:
        wait_log(self.proc, self.log, _ENTRY_READY, 400)

    def stop(self) -> None:
        self.procs.stop(self.proc, signal.SIGINT, timeout=90)


# -- measurements ------------------------------------------------------------------------------------
class FreshnessProbe(threading.Thread):
    """Assigns a new probe row on the training PS every `every_s` and records how long until the serving
    PS returns it."""

    def __init__(self, training: str, serving: list[str], every_s: float, first_id: int) -> None:
        super().__init__(daemon=True)
        self.training, self.serving, self.every_s, self.next_id = training, serving, every_s, first_id
        self.stop_event = threading.Event()
        self.delays: list[float] = []
        self.pending: dict[int, float] = {}

    def run(self) -> None:
        from ps.client.client import PSClient

        with PSClient([self.training]) as trained, PSClient(self.serving) as served:
            dim = trained.table_meta("uid").dim
            last_write = 0.0
            while not self.stop_event.is_set():
                now = time.monotonic()
                if now - last_write >= self.every_s:
                    pid = self.next_id
                    self.next_id += 1
                    trained.assign("uid", [pid], np.full((1, dim), float(pid - PROBE_BASE + 1), np.float32))
                    self.pending[pid] = time.monotonic()  # the update is applied on the training PS
                    last_write = now
                if self.pending:
                    ids = np.array(sorted(self.pending), np.int64)
                    rows = served.lookup("uid", ids)[:, 0]
                    seen = time.monotonic()
                    for i, v in zip(ids, rows):
                        if v == float(i - PROBE_BASE + 1):  # absent rows read 0
                            self.delays.append(seen - self.pending.pop(int(i)))
                time.sleep(0.01)

    def finish(self) -> list[float]:
        self.stop_event.set()
        self.join(30)
        return self.delays


def throughput(training: str, backlog: int, timeout: float = 600) -> float:
    """Training examples/s from the global step: from 10 steps on until 90% of the backlog's steps."""
    from ps.client.client import PSClient

    t0, s0 = 0.0, 0
    deadline = time.monotonic() + timeout
    with PSClient([training]) as client:
        start_step, end_step = client.global_step() + 10, int(0.9 * backlog / BATCH)
        while time.monotonic() < deadline:
            step, now = client.global_step(), time.monotonic()
            if not t0 and step >= start_step:
                t0, s0 = now, step
            if t0 and step >= end_step:
                return (step - s0) * BATCH / (now - t0)
            time.sleep(0.05)
    raise TimeoutError("training did not get through the backlog")


class Feeder(threading.Thread):
    """Keeps the stream `AHEAD` records ahead of training (global step x batch): a backlog the worker never
    drains, which the mock broker's bounded partition log still holds (it drops the oldest records)."""

    AHEAD = 20_000
    WARMUP = 5_000

    def __init__(self, producer, topic: str, stream: list[bytes], training: str) -> None:
        super().__init__(daemon=True)
        self.producer, self.topic, self.stream, self.training = producer, topic, stream, training
        self.stop_event, self.released = threading.Event(), threading.Event()

    def run(self) -> None:
        from ps.client.client import PSClient

        sent = min(len(self.stream), self.WARMUP)
        produce(self.producer, self.topic, self.stream[:sent])
        while not self.released.wait(0.1):
            if self.stop_event.is_set():
                return
        with PSClient([self.training]) as client:
            while sent < len(self.stream) and not self.stop_event.wait(0.1):
                upto = min(len(self.stream), client.global_step() * BATCH + self.AHEAD)
                if upto - sent >= 2000:
                    produce(self.producer, self.topic, self.stream[sent:upto])
                    sent = upto


def wait_synced(serving: list[str], timeout: float = 120) -> None:
    """Until every serving PS shard has applied a sync round."""
    from ps.client.client import PSClient

    deadline = time.monotonic() + timeout
    with PSClient(serving) as client:
        while not all(h.get("sync_versions") for h in client.health()):
            if time.monotonic() > deadline:
                raise TimeoutError("the serving PS took no sync round")
            time.sleep(0.2)


def backlog_run(procs: Procs, brokers: str, producer, stream: list[bytes], name: str, sync_s: float,
                ckpt_s: float, probe_s: float) -> tuple[float, list[float]]:
    """(examples/s, freshness delays) of one launch on the stream, kept ahead of training."""
    topic = f"ratings-{name}"
    cluster = Cluster(procs, name, brokers, topic, sync_s, ckpt_s)
    feeder = Feeder(producer, topic, stream, cluster.training)
    feeder.start()
    probe = None
    try:
        cluster.wait_serving()
        if sync_s:
            wait_synced(cluster.serving)
        feeder.released.set()
        rate = throughput(cluster.training, len(stream))
        if probe_s:
            probe = FreshnessProbe(cluster.training, cluster.serving, probe_s, PROBE_BASE)
            probe.start()
            time.sleep(probe_s * 100)
        return rate, probe.finish() if probe else []
    finally:
        feeder.stop_event.set()
        cluster.stop()


class Predictor:
    """Predict through a `monolith serve` entry with TF Serving's stub, in requests of `batch` examples."""

    def __init__(self, address: str, batch: int = 500) -> None:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(address))
        self.batch = batch

    def __call__(self, examples: list[bytes]) -> np.ndarray:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        out = []
        for i in range(0, len(examples), self.batch):
            req = predict_pb2.PredictRequest()
            req.model_spec.name = "default"
            req.inputs["examples"].CopyFrom(tf.make_tensor_proto(np.array(examples[i:i + self.batch], dtype=object)))
            answer = self.stub.Predict(req, timeout=60)
            key = "ctr" if "ctr" in answer.outputs else sorted(answer.outputs)[0]
            out.append(tf.make_ndarray(answer.outputs[key]).reshape(-1))
        return np.concatenate(out)


def frozen_copy(procs: Procs, cluster: Cluster, step: int) -> Predictor:
    """(b): the serving path of the export of checkpoint `step`, copied away from the export base (whose
    later exports it must not load), on a read-only serving PS."""
    src, dst = cluster.work / "model" / "export", cluster.work / "frozen"
    for part in ("entry", "ps_0"):
        shutil.copytree(src / part / str(step), dst / part / str(step))
    ps, ps_log = procs.start(["-m", "launch.cli", "serve-ps", "--export-dir", str(dst / "ps_0" / str(step)),
                              "--port", "0", "--host", "127.0.0.1"], "frozen-serve-ps")
    ps_address = f"127.0.0.1:{wait_log(ps, ps_log, _READY).group(1)}"
    entry, entry_log = procs.start(["-m", "launch.cli", "serve", "--export-base", str(dst), "--port", "0",
                                    "--host", "127.0.0.1", "--ps-addresses", ps_address], "frozen-serve")
    return Predictor(f"127.0.0.1:{wait_log(entry, entry_log, _READY).group(1)}")


def checkpoint_covering(model_dir: Path, records: int, timeout: float = 120) -> int:
    """The step of the first checkpoint whose input offsets hold `records` records, once its export exists."""
    from ps.persist.checkpoint import latest_checkpoint, read_meta, stream_offsets

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = latest_checkpoint(model_dir)
        if path is not None:
            consumed = sum(o for parts in (stream_offsets(path) or {}).values() for o in parts.values())
            step = read_meta(path, "ckpt")["step"]
            if consumed >= records and (model_dir / "export" / "entry" / str(step)).is_dir():
                return int(step)
        time.sleep(0.2)
    raise TimeoutError(f"no exported checkpoint covering {records} records")


def quality_run(procs: Procs, brokers: str, producer, data, args) -> tuple[list[dict], list[float]]:
    """Per-slice AUC of (a) and, from the middle on, (b); and the freshness delays at 10 s."""
    from worker.models.movielens import monolith_examples
    from worker.models.movielens_stream import stream_records

    n = data.size
    warm = int(n * args.warmup)
    half = n // 2
    topic = "ratings-quality"
    produce(producer, topic, stream_records(data, 0, warm))
    cluster = Cluster(procs, "quality", brokers, topic, 10.0, args.ckpt_s)
    probe = None
    try:
        cluster.wait_serving()
        live = Predictor(cluster.entry)
        probe = FreshnessProbe(cluster.training, cluster.serving, 0.5, PROBE_BASE)
        probe.start()
        frozen: Predictor | None = None
        slices = []
        start, t0 = warm, time.monotonic()
        print(f"  streaming ratings {warm}..{n} at {args.rate:g}/s in slices of {args.slice}", flush=True)
        while start < n:
            end = min(n, start + args.slice, half if start < half else n)
            labels = data.columns["label"][start:end]
            examples = monolith_examples(data, start, end)
            row = {"start": start, "end": end, "a": auc(labels, live(examples))}
            if frozen is not None:
                row["b"] = auc(labels, frozen(examples))
            slices.append(row)
            produce(producer, topic, stream_records(data, start, end))
            start = end
            if start == half and frozen is None:
                paused = time.monotonic()
                step = checkpoint_covering(cluster.work / "model", half)
                frozen = frozen_copy(procs, cluster, step)
                print(f"  (b) frozen at checkpoint {step} (first {half} ratings); the stream paused "
                      f"{time.monotonic() - paused:.0f}s", flush=True)
                t0 += time.monotonic() - paused
            time.sleep(max(0.0, t0 + (start - warm) / args.rate - time.monotonic()))
        return slices, probe.finish()
    finally:
        if probe is not None:
            probe.finish()
        cluster.stop()


def percentiles(delays: list[float]) -> tuple[float, float]:
    return (float(np.percentile(delays, 50)), float(np.percentile(delays, 99))) if delays else (float("nan"),) * 2


def plot(slices: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s["end"] for s in slices]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(x, [s["a"] for s in slices], label="(a) online sync every 10 s")
    xb = [s["end"] for s in slices if "b" in s]
    ax.plot(xb, [s["b"] for s in slices if "b" in s], label="(b) sync stopped at 50%")
    if xb:
        ax.axvline(x=next(s["start"] for s in slices if "b" in s), color="grey", linestyle=":")
    ax.set_xlabel("ratings streamed (time order)")
    ax.set_ylabel("AUC of served predictions, before training")
    ax.set_title("MovieLens-100K prequential AUC through monolith serve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=800.0, help="ratings/s of the paced stream")
    parser.add_argument("--slice", type=int, default=2500, help="ratings per prequential slice")
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of the stream trained before serving")
    parser.add_argument("--ckpt-s", type=float, default=15.0, help="checkpoint (and export) interval")
    parser.add_argument("--cost-ratings", type=int, default=50_000, help="ratings trained by each cost launch")
    parser.add_argument("--cost-rounds", type=int, default=5,
                        help="rounds of a launch with the sync on and one with it off (median of their ratios)")
    parser.add_argument("--plot", default=str(REPO / "benchmarks" / "online_quality.png"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # SIGTERM unwinds like Ctrl-C, so the `finally` below stops the broker and the launches it started
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    from confluent_kafka import Producer

    from worker.models.movielens_data import load_movielens
    from worker.models.movielens_stream import stream_records

    data = load_movielens()
    stream = stream_records(data, 0, args.cost_ratings)
    work = Path(tempfile.mkdtemp(prefix="online-bench-"))
    procs = Procs(work)
    try:
        brokers = start_broker(procs)
        producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5, "queue.buffering.max.messages": 200000,
                             "log_level": 2})  # not the disconnects when the broker stops at the end
        print(f"cost: the first {len(stream)} ratings, kept ahead of training, sync every 1 s vs off, "
              f"{args.cost_rounds} rounds interleaved ...", flush=True)
        ons, offs, fresh1 = [], [], []
        for r in range(args.cost_rounds):
            def sync_on(r=r):
                return backlog_run(procs, brokers, producer, stream, f"sync1s-{r}", 1.0, args.ckpt_s,
                                   0.2 if r == 0 else 0.0)

            def sync_off(r=r):
                return backlog_run(procs, brokers, producer, stream, f"syncoff-{r}", 0.0, args.ckpt_s, 0.0)

            if r % 2:  # which goes first alternates: neither side always runs on a machine the other warmed
                (off, _), (on, delays) = sync_off(), sync_on()
            else:
                (on, delays), (off, _) = sync_on(), sync_off()
            ons.append(on)
            offs.append(off)
            fresh1 += delays
            print(f"  round {r}: examples/s sync on {on:.0f}, off {off:.0f} (on/off {on / off:.2f})", flush=True)
        on, off = float(np.median(ons)), float(np.median(offs))
        # paired: each round's two launches ran back to back, so their ratio cancels what moved between rounds
        # (launches of one kind differ by up to 2x here)
        ratio = float(np.median(np.array(ons) / np.array(offs)))
        print("quality: paced stream, sync every 10 s, (b) frozen at 50% ...", flush=True)
        slices, fresh10 = quality_run(procs, brokers, producer, data, args)
    except BaseException:
        for log in sorted(work.glob("*.log")):
            print(f"--- last lines of {log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:]))
        raise
    finally:
        procs.close()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'slice (ratings)':<18} {'(a) AUC':>8} {'(b) AUC':>8}")
    for s in slices:
        b = f"{s['b']:8.4f}" if "b" in s else f"{'-':>8}"
        print(f"{s['start']:>7}-{s['end']:<10} {s['a']:8.4f} {b}")
    second = [s for s in slices if "b" in s]
    a2, b2 = float(np.mean([s["a"] for s in second])), float(np.mean([s["b"] for s in second]))
    wins = sum(s["a"] > s["b"] for s in second)
    plot(slices, Path(args.plot))
    png = Path(args.plot).resolve()
    shown = png.relative_to(REPO) if png.is_relative_to(REPO) else png  # no machine paths in RESULTS.md
    print(f"(AUC: numpy closed form, Mann-Whitney rank sum; plot: {shown})")
    print(f"\n{'sync interval':<14} {'probes':>7} {'p50 s':>7} {'p99 s':>7}")
    for label, delays in (("1 s", fresh1), ("10 s", fresh10)):
        p50, p99 = percentiles(delays)
        print(f"{label:<14} {len(delays):7d} {p50:7.2f} {p99:7.2f}")
    print(f"\ntraining examples/s (median of {len(ons)} launches each): sync on (1 s) {on:.0f}, off {off:.0f}")
    print(f"second half: mean slice AUC (a) {a2:.4f}, (b) {b2:.4f}; (a) above (b) in {wins} of {len(second)} slices")
    checks = [("freshness p99, sync 1 s (s)", percentiles(fresh1)[1], 2.0, "<="),
              ("freshness p99, sync 10 s (s)", percentiles(fresh10)[1], 11.0, "<="),
              ("second-half AUC (a) - (b)", a2 - b2, 0.0, ">"),
              ("examples/s sync on / off, median of rounds", ratio, 0.9, ">=")]
    print()
    ok = True
    for label, value, target, op in checks:
        met = {"<=": value <= target, ">=": value >= target, ">": value > target}[op]
        ok &= bool(met)
        print(f"{label:<34} {value:8.4f}  (target {op} {target}: {'MET' if met else 'NOT met'})")
    print(f"\nall targets met: {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
