"""Serving benchmark: a standalone MovieLens export served by `monolith serve`, against same-run peers.

Every peer answers the same request, 64 serialized Monolith Examples of the MovieLens test set, for 8
concurrent clients on loopback (threads of this process sending the pre-serialized request bytes):
  A  the floor: the same SavedModel signature called in this process (tensor in, numpy out);
  B  a gRPC echo server (its own process, same gRPC server code) returning a response of the same size;
  ours  `monolith serve` on the standalone export, and `monolith serve` + 2 `monolith serve-ps` on the
        distributed export of the same checkpoint; both again with `--merge-requests` (concurrent
        requests run as one batch; opt-in, so not what the targets judge).
Targets: standalone p50 <= 1.3 x (A p50 + B p50); standalone QPS >= 0.7 x the QPS implied by that sum
(8 clients / (A p50 + B p50)); distributed p50 <= 2 x standalone p50.

Run: `python benchmarks/serving_bench.py` (about 3 min; trains a small model first). The machine may be
shared: compare the ratios, which are measured in the same run.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BATCH, CLIENTS = 64, 8
PREDICT = "/tensorflow.serving.PredictionService/Predict"
_READY = re.compile(r"ready: serving (?:model \S+ version \d+|ps shard \d+ of \d+ \(.*\)) on [\d.]+:(\d+)")


def _echo_server(port_file: str, reply_bytes: int) -> None:
    """Peer B: the same gRPC server code, answering every Predict with a fixed reply of the same size."""
    import grpc

    from ps.config import ServerConfig
    from ps.service.server import serve

    reply = bytes(reply_bytes)
    handler = grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
        "Predict": grpc.unary_unary_rpc_method_handler(lambda raw, ctx: reply, request_deserializer=None,
                                                       response_serializer=None)})
    def ready(port: int) -> None:
        Path(port_file).write_text(str(port))

    serve([handler], ServerConfig(port=0, threads=16), stop=threading.Event(), on_ready=ready)


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    with open(log, "wb") as fh:
        return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _address(proc: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = _READY.search(log.read_text(errors="replace"))
        if m:
            return f"127.0.0.1:{m.group(1)}"
        if proc.poll() is not None:
            raise RuntimeError(log.read_text(errors="replace")[-3000:])
        time.sleep(0.1)
    raise TimeoutError(log.read_text(errors="replace")[-3000:])


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(call, seconds: float, pids: tuple[int, ...] = (), warmup_s: float = 1.5) -> dict:
    """CLIENTS threads calling `call()` back to back; latencies of the calls after the warmup, and the CPU
    time per call of this process (the clients) and the server processes `pids` after the warmup: unlike
    latency, that does not depend on how much of the machine other jobs take."""
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
    start = time.perf_counter()
    begin, end = start + warmup_s, start + warmup_s + seconds
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            while (now := time.perf_counter()) < end:
                call()
                done = time.perf_counter()
                if now >= begin:
                    latencies[i].append(done - now)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, begin - time.perf_counter()))
    cpu_start = time.process_time() + sum(_cpu_s(p) for p in pids)
    for t in threads:
        t.join()
    cpu = time.process_time() + sum(_cpu_s(p) for p in pids) - cpu_start
    if errors:
        raise errors[0]
    flat = np.array([x for lat in latencies for x in lat])
    return {"p50": float(np.percentile(flat, 50)), "p99": float(np.percentile(flat, 99)),
            "qps": flat.size / seconds, "calls": int(flat.size), "cpu_ms": cpu / flat.size * 1e3}


def _grpc_call(address: str, request: bytes):
    import grpc

    channels = [grpc.insecure_channel(address) for _ in range(CLIENTS)]
    methods = [c.unary_unary(PREDICT, request_serializer=None, response_deserializer=None) for c in channels]
    local = threading.local()
    counter = iter(range(1 << 30))

    def call():
        if not hasattr(local, "method"):
            local.method = methods[next(counter) % CLIENTS]
        return local.method(request, timeout=60)

    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement time per peer")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--echo-server", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server:
        _echo_server(args.echo_server[0], int(args.echo_server[1]))
        return 0
    logging.basicConfig(level=logging.WARNING)
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from worker.export.saved_model_exporters import DistributedExporter, StandaloneExporter
    from worker.models.movielens import MovieRankingModel, monolith_examples
    from worker.runtime.estimator import Estimator
    from worker.runtime.run_config import RunConfig

    work = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        print(f"training MovieLens for {args.train_steps} steps, exporting ...", flush=True)
        model = MovieRankingModel()
        est = Estimator(model, RunConfig(model_dir=str(work / "model")))
        est.train(args.train_steps)
        est.save()
        est.close()
        _, test = model.data()
        standalone = StandaloneExporter(MovieRankingModel(), str(work / "model"), str(work / "standalone"),
                                        global_step_as_timestamp=True).export_saved_model().decode()
        dist = DistributedExporter(MovieRankingModel(), str(work / "model"), str(work / "distributed"),
                                   num_serving_shards=2, global_step_as_timestamp=True).export_saved_model()
        examples = monolith_examples(test, 0, BATCH)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "default"
        request.inputs["examples"].CopyFrom(tf.make_tensor_proto(np.array(examples, dtype=object)))
        request_bytes = request.SerializeToString()

        logs = {name: work / f"{name}.log" for name in ("echo", "serve", "serve-ps0", "serve-ps1", "serve-dist",
                                                         "serve-merged", "serve-dist-merged")}
        port_file = work / "echo.port"
        loaded = tf.saved_model.load(standalone)
        fn = loaded.signatures["serving_default"]
        batch = tf.constant(examples)
        reply = predict_pb2.PredictResponse()
        for k, v in fn(examples=batch).items():
            reply.outputs[k].CopyFrom(tf.make_tensor_proto(v.numpy()))
        reply.model_spec.CopyFrom(request.model_spec)
        reply.model_spec.version.value = 1
        procs.append(_start([__file__, "--echo-server", str(port_file), str(reply.ByteSize())], logs["echo"]))
        procs.append(_start(["-m", "launch.cli", "serve", "--export-base", str(work / "standalone"), "--port", "0"],
                            logs["serve"]))
        for i in range(2):
            procs.append(_start(["-m", "launch.cli", "serve-ps", "--export-dir", dist[f"ps_{i}"].decode(),
                                 "--port", "0"], logs[f"serve-ps{i}"]))
        ps_addresses = [_address(procs[2 + i], logs[f"serve-ps{i}"]) for i in range(2)]
        procs.append(_start(["-m", "launch.cli", "serve", "--export-base", str(work / "distributed"), "--port", "0",
                             "--ps-addresses", ",".join(ps_addresses)], logs["serve-dist"]))
        procs.append(_start(["-m", "launch.cli", "serve", "--export-base", str(work / "standalone"), "--port", "0",
                             "--merge-requests"], logs["serve-merged"]))
        procs.append(_start(["-m", "launch.cli", "serve", "--export-base", str(work / "distributed"), "--port", "0",
                             "--ps-addresses", ",".join(ps_addresses), "--merge-requests"], logs["serve-dist-merged"]))
        serve_address, dist_address = _address(procs[1], logs["serve"]), _address(procs[4], logs["serve-dist"])
        merged_address = _address(procs[5], logs["serve-merged"])
        dist_merged_address = _address(procs[6], logs["serve-dist-merged"])
        deadline = time.monotonic() + 60
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        echo_address = f"127.0.0.1:{port_file.read_text()}"

        print(f"measuring: batch {BATCH}, {CLIENTS} concurrent clients, {args.seconds:g}s each (machine may be "
              f"shared with other jobs; ratios are same-run)", flush=True)
        results = {
            "A in-process signature": _measure(lambda: {k: v.numpy() for k, v in fn(examples=batch).items()},
                                               args.seconds),
            "B gRPC echo": _measure(_grpc_call(echo_address, request_bytes), args.seconds, (procs[0].pid,)),
            "monolith serve (standalone)": _measure(_grpc_call(serve_address, request_bytes), args.seconds,
                                                    (procs[1].pid,)),
            "monolith serve + 2 serving PS": _measure(_grpc_call(dist_address, request_bytes), args.seconds,
                                                      tuple(p.pid for p in procs[2:5])),
            "standalone --merge-requests": _measure(_grpc_call(merged_address, request_bytes), args.seconds,
                                                    (procs[5].pid,)),
            "distributed --merge-requests": _measure(_grpc_call(dist_merged_address, request_bytes), args.seconds,
                                                     (*(p.pid for p in procs[2:4]), procs[6].pid)),
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'peer':<32} {'p50 ms':>8} {'p99 ms':>8} {'QPS':>8} {'calls':>7} {'CPU ms/call':>12}")
    for name, r in results.items():
        print(f"{name:<32} {r['p50'] * 1e3:8.2f} {r['p99'] * 1e3:8.2f} {r['qps']:8.0f} {r['calls']:7d} "
              f"{r['cpu_ms']:12.2f}")
    print("(CPU ms/call: this process's clients plus the peer's server processes, per call)")
    a, b = results["A in-process signature"], results["B gRPC echo"]
    ours, dist_r = results["monolith serve (standalone)"], results["monolith serve + 2 serving PS"]
    floor = a["p50"] + b["p50"]
    implied_qps = CLIENTS / floor
    checks = [
        ("standalone p50 / (A p50 + B p50)", ours["p50"] / floor, 1.3, "<="),
        ("standalone QPS / (8 / (A p50 + B p50))", ours["qps"] / implied_qps, 0.7, ">="),
        ("distributed p50 / standalone p50", dist_r["p50"] / ours["p50"], 2.0, "<="),
    ]
    print(f"\n{'distributed CPU / standalone CPU per call (not a target)':<42} "
          f"{dist_r['cpu_ms'] / ours['cpu_ms']:6.2f}")
    for kind, plain in (("standalone", ours), ("distributed", dist_r)):
        merged = results[f"{kind} --merge-requests"]
        print(f"{kind + ' --merge-requests / default, p50 (not a target)':<42} {merged['p50'] / plain['p50']:6.2f}"
              f"   CPU per call {merged['cpu_ms'] / plain['cpu_ms']:.2f}")
    print()
    ok = True
    for label, value, target, op in checks:
        met = value <= target if op == "<=" else value >= target
        ok &= met
        print(f"{label:<42} {value:6.2f}  (target {op} {target}: {'met' if met else 'NOT met'})")
    print(f"\nall targets met: {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
