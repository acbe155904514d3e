"""PS transport benchmark: Lookup / ApplyGradients against a real shard process, with same-run peers.

One PS process (per server model), this process as the client, loopback. Each call carries 65,536
Zipf-distributed ids (a=1.2 over a 1M-row table, dim 16); the client dedupes them (~20% unique), so
the wire carries the unique ids and their rows. Peers measured in the same run with exactly the same
per-call byte counts:
  (a) a gRPC echo on the same server model (`ps.server.serve`, same threads and options) that
      returns a preallocated payload of the lookup reply's size: the cost of gRPC itself;
  (b) a raw TCP socket echo with preallocated buffers: the ceiling of the loopback.
Also: float16 transport, both server models (sync thread pool vs grpc.aio on uvloop), and 2 shards ×
2 client threads. Rows/s counts the caller's ids (65,536 per call).

Run: `python benchmarks/ps_bench.py` (≈2 min). `--seconds` sets the time per measurement.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ps.malloc_tuning import ENV as MALLOC_ENV  # noqa: E402
from services.ports import free_port  # noqa: E402

IDS_PER_CALL = 65_536
DIM = 16
TABLE_ROWS = 1_000_000
ZIPF_A = 1.2
TABLE = {"dim": DIM, "initializer": {"type": "random_uniform", "minval": -0.05, "maxval": 0.05, "seed": 1},
         "optimizer": {"type": "adagrad", "learning_rate": 0.05, "initial_accumulator_value": 0.1}}
ECHO_METHOD = "/bench.Echo/Echo"
_HDR = struct.Struct("<QQ")


# -- peer servers (run as child processes of this script) -------------------------------------------
def serve_grpc_echo(model: str, port: int) -> None:
    """Same `serve()` as the PS: request = 8-byte reply size + payload; reply = a preallocated payload."""
    import grpc

    from ps.server import serve

    replies: dict[int, bytes] = {}

    def echo(request: bytes, context) -> bytes:
        (size,) = struct.unpack_from("<Q", request)
        reply = replies.get(size)
        if reply is None:
            reply = replies.setdefault(size, bytes(size))
        return reply

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    serve([handler], f"127.0.0.1:{port}", model=model, stop=threading.Event(),
          on_ready=lambda p: print(f"ready {p}", flush=True))


def _recv_exact(conn: socket.socket, view: memoryview) -> None:
    while view.nbytes:
        n = conn.recv_into(view)
        if n == 0:
            raise ConnectionError("peer closed")
        view = view[n:]


def serve_tcp_echo(port: int) -> None:
    """Framed echo: 16-byte header (request size, reply size), request, then a preallocated reply."""
    srv = socket.create_server(("127.0.0.1", port))
    print(f"ready {port}", flush=True)

    def handle(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        header = bytearray(_HDR.size)
        buf = bytearray(64 << 20)
        reply = bytearray(64 << 20)
        try:
            while True:
                _recv_exact(conn, memoryview(header))
                req_size, reply_size = _HDR.unpack(header)
                _recv_exact(conn, memoryview(buf)[:req_size])
                conn.sendall(memoryview(reply)[:reply_size])
        except ConnectionError:
            conn.close()

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


# -- client side ------------------------------------------------------------------------------------
class Children:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str]) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(REPO), **MALLOC_ENV)
        proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: subprocess.Popen, pattern: str = r"ready\D*?(\d+)") -> None:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if re.search(pattern, line):
                threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining
                return
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"child {proc.args} did not become ready (rc={proc.poll()})")

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def start_ps(children: Children, index: int, num_shards: int, model: str) -> str:
    port = free_port()
    proc = children.start(["-m", "services.cli", "ps", "--port", str(port), "--shard-index", str(index),
                           "--num-shards", str(num_shards), "--server-model", model, "--metrics-port", "-1"])
    return f"127.0.0.1:{port}", proc


def make_batches(n_batches: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The table's ids, Zipf batches (hot ids repeat) and uniform batches (~97% unique) over them."""
    rng = np.random.default_rng(seed)
    population = rng.choice(np.int64(2) ** 62, size=TABLE_ROWS, replace=False).astype(np.int64)
    zipf = [population[np.minimum(rng.zipf(ZIPF_A, size=IDS_PER_CALL), TABLE_ROWS) - 1] for _ in range(n_batches)]
    uniform = [population[rng.integers(0, TABLE_ROWS, size=IDS_PER_CALL)] for _ in range(n_batches)]
    return population, zipf, uniform


def timed(fn, seconds: float) -> float:
    """Calls per second of fn(i) over `seconds` (after one warm-up call)."""
    fn(0)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(n)
        n += 1
    return n / (time.perf_counter() - start)


def best_of(rounds: int, fn, seconds: float) -> float:
    return max(timed(fn, seconds) for _ in range(rounds))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="best of this many measurements")
    parser.add_argument("--serve-grpc-echo", choices=("sync", "aio"))
    parser.add_argument("--serve-tcp-echo", action="store_true")
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.serve_grpc_echo:
        serve_grpc_echo(args.serve_grpc_echo, args.port)
        return 0
    if args.serve_tcp_echo:
        serve_tcp_echo(args.port)
        return 0

    import grpc

    from ps.malloc_tuning import tune_malloc
    from ps.server import grpc_options
    from services.ps_client import PSClient
    from services.ps_routing import route

    tune_malloc()
    children = Children()
    try:
        servers = {m: start_ps(children, 0, 1, m) for m in ("sync", "aio")}
        echo_ports = {m: free_port() for m in ("sync", "aio")}
        echo_procs = {m: children.start([__file__, "--serve-grpc-echo", m, "--port", str(p)])
                      for m, p in echo_ports.items()}
        tcp_port = free_port()
        tcp_proc = children.start([__file__, "--serve-tcp-echo", "--port", str(tcp_port)])
        two = [start_ps(children, i, 2, "sync") for i in range(2)]
        population, batches, uniform = make_batches(8)
        for _addr, proc in [*servers.values(), *two]:
            children.wait_ready(proc)
        for proc in [*echo_procs.values(), tcp_proc]:
            children.wait_ready(proc)

        uniques = [route(b, 1).unique.size for b in batches]
        lookup_sizes = [(u * 8, u * DIM * 4) for u in uniques]          # (request, reply) bytes
        uniform_sizes = [(u * 8, u * DIM * 4) for u in (route(b, 1).unique.size for b in uniform)]
        apply_sizes = [(u * 8 + u * DIM * 4, 0) for u in uniques]
        f16_sizes = [(u * 8, u * DIM * 2) for u in uniques]
        mean_unique = statistics.mean(uniques)
        print(f"workload: {IDS_PER_CALL} Zipf(a={ZIPF_A}) ids per call over {TABLE_ROWS:,} rows, dim {DIM}; "
              f"{mean_unique:,.0f} unique per call ({mean_unique / IDS_PER_CALL:.0%}); "
              f"lookup wire {statistics.mean(a + b for a, b in lookup_sizes) / 2**20:.2f} MiB/call")

        rng = np.random.default_rng(1)
        grads = [rng.normal(scale=1e-3, size=(IDS_PER_CALL, DIM)).astype(np.float32) for _ in batches]
        results: dict[str, float] = {}

        def populate(client: PSClient) -> None:
            client.create_tables({"emb": TABLE})
            for lo in range(0, TABLE_ROWS, 1 << 17):
                chunk = population[lo:lo + (1 << 17)]
                client.assign("emb", chunk, np.full((chunk.size, DIM), 0.01, np.float32))

        def grpc_echo_rate(address: str, sizes) -> float:
            channel = grpc.insecure_channel(address, options=grpc_options(512 << 20))
            call = channel.unary_unary(ECHO_METHOD)
            payloads = [struct.pack("<Q", reply) + bytes(req) for req, reply in sizes]
            rate = best_of(args.rounds, lambda i: call(payloads[i % len(payloads)], timeout=30), args.seconds)
            channel.close()
            return rate

        def tcp_echo_rate(sizes) -> float:
            conn = socket.create_connection(("127.0.0.1", tcp_port))
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reply = bytearray(64 << 20)
            frames = [_HDR.pack(req, rep) + bytes(req) for req, rep in sizes]

            def once(i: int) -> None:
                k = i % len(frames)
                conn.sendall(frames[k])
                _recv_exact(conn, memoryview(reply)[: sizes[k][1]])

            rate = best_of(args.rounds, once, args.seconds)
            conn.close()
            return rate

        for model, (address, _proc) in servers.items():
            with PSClient([address]) as client:
                populate(client)
                results[f"{model} lookup"] = best_of(
                    args.rounds, lambda i, c=client: c.lookup("emb", batches[i % 8]), args.seconds)
                results[f"{model} apply"] = best_of(
                    args.rounds, lambda i, c=client: c.apply_gradients("emb", batches[i % 8], grads[i % 8]),
                    args.seconds)
            if model == "sync":
                with PSClient([address]) as client:
                    results["sync lookup uniform"] = best_of(
                        args.rounds, lambda i, c=client: c.lookup("emb", uniform[i % 8]), args.seconds)
                with PSClient([address], float16_lookup=True) as client:
                    results["sync lookup f16"] = best_of(
                        args.rounds, lambda i, c=client: c.lookup("emb", batches[i % 8]), args.seconds)
            echo_addr = f"127.0.0.1:{echo_ports[model]}"
            results[f"{model} grpc echo (lookup bytes)"] = grpc_echo_rate(echo_addr, lookup_sizes)
            results[f"{model} grpc echo (apply bytes)"] = grpc_echo_rate(echo_addr, apply_sizes)
            if model == "sync":
                results["sync grpc echo (f16 lookup bytes)"] = grpc_echo_rate(echo_addr, f16_sizes)
                results["sync grpc echo (uniform lookup bytes)"] = grpc_echo_rate(echo_addr, uniform_sizes)
        results["tcp echo (lookup bytes)"] = tcp_echo_rate(lookup_sizes)
        results["tcp echo (apply bytes)"] = tcp_echo_rate(apply_sizes)
        results["tcp echo (uniform lookup bytes)"] = tcp_echo_rate(uniform_sizes)

        # 2 shards x 2 client threads (each thread its own client, like two workers)
        addrs = [a for a, _p in two]
        with PSClient(addrs) as client:
            populate(client)
        for name, op in (("lookup", lambda c, i: c.lookup("emb", batches[i % 8])),
                         ("apply", lambda c, i: c.apply_gradients("emb", batches[i % 8], grads[i % 8]))):
            clients = [PSClient(addrs) for _ in range(2)]
            rates = [0.0, 0.0]

            def run(k: int, op=op, clients=clients, rates=rates) -> None:
                rates[k] = best_of(args.rounds, lambda i: op(clients[k], i + k), args.seconds)

            threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            results[f"2 shards x 2 threads {name}"] = sum(rates)
            for c in clients:
                c.close()
    finally:
        children.close()

    mib = 2**20
    wire = {"lookup": statistics.mean(a + b for a, b in lookup_sizes),
            "apply": statistics.mean(a for a, _ in apply_sizes),
            "f16": statistics.mean(a + b for a, b in f16_sizes),
            "uniform": statistics.mean(a + b for a, b in uniform_sizes)}
    print(f"\n{'measurement':42s} {'calls/s':>9s} {'rows/s':>13s} {'wire MB/s':>10s}")
    for name, rate in results.items():
        kind = next((k for k in ("f16", "uniform", "apply") if k in name), "lookup")
        print(f"{name:42s} {rate:9.1f} {rate * IDS_PER_CALL:13,.0f} {rate * wire[kind] / mib:10.1f}")
    r = results
    ratios = [
        ("sync Lookup / gRPC echo (target >= 0.8)", r["sync lookup"], r["sync grpc echo (lookup bytes)"]),
        ("sync Lookup / raw TCP echo (target >= 0.35)", r["sync lookup"], r["tcp echo (lookup bytes)"]),
        ("sync Lookup uniform / gRPC echo", r["sync lookup uniform"], r["sync grpc echo (uniform lookup bytes)"]),
        ("sync Lookup uniform / raw TCP echo", r["sync lookup uniform"], r["tcp echo (uniform lookup bytes)"]),
        ("sync Lookup f16 / gRPC echo of its bytes", r["sync lookup f16"], r["sync grpc echo (f16 lookup bytes)"]),
        ("sync Apply / gRPC echo", r["sync apply"], r["sync grpc echo (apply bytes)"]),
        ("sync Apply / raw TCP echo", r["sync apply"], r["tcp echo (apply bytes)"]),
        ("aio Lookup / gRPC echo", r["aio lookup"], r["aio grpc echo (lookup bytes)"]),
        ("aio Apply / gRPC echo", r["aio apply"], r["aio grpc echo (apply bytes)"]),
        ("aio / sync Lookup", r["aio lookup"], r["sync lookup"]),
        ("aio / sync Apply", r["aio apply"], r["sync apply"]),
        ("2 shards x 2 threads / 1 x 1 Lookup", r["2 shards x 2 threads lookup"], r["sync lookup"]),
        ("2 shards x 2 threads / 1 x 1 Apply", r["2 shards x 2 threads apply"], r["sync apply"]),
    ]
    print("\nratios (same run, same bytes per call):")
    for label, a, b in ratios:
        print(f"  {label:46s} {a / b:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
