"""PS transport benchmark: Lookup / ApplyGradients against a real shard process, with same-run peers.

One PS process (per server model), this process as the client, loopback. Each call carries 65,536
Zipf-distributed ids (a=1.2 over a 1M-row table, dim 16); the client dedupes them (~15% unique), so
the wire carries the unique ids and their rows. Peers measured in the same run, each named by what it
moves per call (request bytes in, reply bytes out):
  (a) gRPC echo on the same server model (`ps.service.server.serve`, same threads and options) that
      returns a preallocated reply of the given size: the cost of gRPC itself;
  (b) a raw TCP socket echo with preallocated buffers: the ceiling of the loopback.
Each peer runs with two payloads:
  - "logical": the call's payload, 65,536 ids x dim 16 (512 KiB of int64 ids in, 4 MiB of float32
    rows out; for ApplyGradients 512 KiB ids + 4 MiB gradients in): the call as its caller sees it.
    This is what the targets compare: rows/s delivered to the caller against rows/s the transport
    alone moves for the same call. Deduping is part of how our Lookup serves that payload.
  - "deduped": exactly the bytes our Lookup/ApplyGradients put on the wire (unique ids in, their rows
    out; unique ids + summed gradients in). A diagnostic: what our RPC, the client's dedupe and the
    re-expansion cost beyond gRPC for the bytes actually sent. Uniform ids (~97% unique, so dedupe
    saves almost nothing) show that overhead without dedupe's help.
Also: float16 transport, uniform ids (~97% unique), both server models (sync thread pool vs grpc.aio
on uvloop), and 2 shards x 2 client threads. Rows/s counts the caller's ids (65,536 per call).
Rates are the best of `--rounds` measurements for every entry alike.

Run: `python benchmarks/ps_bench.py` (about 2.5 min). `--seconds` sets the time per measurement.
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

from ps.kernels.threads import ENV as KERNEL_THREADS_ENV  # noqa: E402
from services.malloc_tuning import ENV as MALLOC_ENV  # noqa: E402
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

    from ps.config import ServerConfig
    from ps.service.server import serve

    replies: dict[int, bytes] = {}

    def echo(request: bytes, context) -> bytes:
        (size,) = struct.unpack_from("<Q", request)
        reply = replies.get(size)
        if reply is None:
            reply = replies.setdefault(size, bytes(size))
        return reply

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    serve([handler], ServerConfig(port=port, server_model=model), stop=threading.Event(),
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
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, args: list[str]) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=str(REPO), **MALLOC_ENV, **KERNEL_THREADS_ENV)
        proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: subprocess.Popen[str], pattern: str = r"ready\D*?(\d+)") -> None:
        deadline = time.monotonic() + 120
        stdout = proc.stdout
        assert stdout is not None
        for line in stdout:
            if re.search(pattern, line):
                threading.Thread(target=stdout.read, daemon=True).start()  # keep draining
                return
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"child {proc.args!r} did not become ready (rc={proc.poll()})")

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def start_ps(children: Children, index: int, num_shards: int, model: str) -> tuple[str, subprocess.Popen[str]]:
    port = free_port()
    proc = children.start(["-m", "launch.cli", "ps", "--port", str(port), "--shard-index", str(index),
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


RATIOS = [
    ("sync Lookup / gRPC echo of the call's payload (target >= 0.8)", "sync lookup",
     "sync grpc echo (lookup logical bytes)"),
    ("sync Lookup / raw TCP echo of the call's payload (target >= 0.35)", "sync lookup",
     "tcp echo (lookup logical bytes)"),
    ("sync Lookup / gRPC echo, deduped bytes", "sync lookup", "sync grpc echo (lookup bytes)"),
    ("sync Lookup / raw TCP echo, deduped bytes", "sync lookup", "tcp echo (lookup bytes)"),
    ("sync Lookup uniform / gRPC echo, deduped bytes", "sync lookup uniform", "sync grpc echo (uniform bytes)"),
    ("sync Lookup uniform / raw TCP echo, deduped bytes", "sync lookup uniform", "tcp echo (uniform bytes)"),
    ("sync Lookup f16 / gRPC echo, its deduped bytes", "sync lookup f16", "sync grpc echo (f16 bytes)"),
    ("sync Apply / gRPC echo, deduped bytes", "sync apply", "sync grpc echo (apply bytes)"),
    ("sync Apply / raw TCP echo, deduped bytes", "sync apply", "tcp echo (apply bytes)"),
    ("sync Apply / gRPC echo, logical payload", "sync apply", "sync grpc echo (apply logical bytes)"),
    ("sync Apply / raw TCP echo, logical payload", "sync apply", "tcp echo (apply logical bytes)"),
    ("aio Lookup / gRPC echo, deduped bytes", "aio lookup", "aio grpc echo (lookup bytes)"),
    ("aio Lookup / gRPC echo, logical payload", "aio lookup", "aio grpc echo (lookup logical bytes)"),
    ("aio Apply / gRPC echo, deduped bytes", "aio apply", "aio grpc echo (apply bytes)"),
    ("aio Apply / gRPC echo, logical payload", "aio apply", "aio grpc echo (apply logical bytes)"),
    ("aio / sync Lookup", "aio lookup", "sync lookup"),
    ("aio / sync Apply", "aio apply", "sync apply"),
    ("2 shards x 2 threads / 1 x 1 Lookup", "2 shards x 2 threads lookup", "sync lookup"),
    ("2 shards x 2 threads / 1 x 1 Apply", "2 shards x 2 threads apply", "sync apply"),
]


class Bench:
    """One run: the workload, the peers' addresses, and every rate measured (name -> calls/s)."""

    def __init__(self, args: argparse.Namespace, echo_ports: dict[str, int], tcp_port: int) -> None:
        from ps.client.routing import route

        self.args, self.echo_ports, self.tcp_port = args, echo_ports, tcp_port
        self.population, self.batches, self.uniform = make_batches(8)
        self.uniques = [route(b, 1).unique.size for b in self.batches]
        self.uniform_uniques = [route(b, 1).unique.size for b in self.uniform]
        u, uu = self.uniques, self.uniform_uniques
        self.sizes = {  # (request, reply) bytes per call of each payload the peers echo
            "lookup": [(n * 8, n * DIM * 4) for n in u],
            "uniform": [(n * 8, n * DIM * 4) for n in uu],
            "apply": [(n * 8 + n * DIM * 4, 0) for n in u],
            "f16": [(n * 8, n * DIM * 2) for n in u],
            "lookup logical": [(IDS_PER_CALL * 8, IDS_PER_CALL * DIM * 4)],
            "apply logical": [(IDS_PER_CALL * 8 + IDS_PER_CALL * DIM * 4, 0)],
        }
        rng = np.random.default_rng(1)
        self.grads = [rng.normal(scale=1e-3, size=(IDS_PER_CALL, DIM)).astype(np.float32) for _ in self.batches]
        self.results: dict[str, float] = {}
        self.kinds: dict[str, str] = {}  # result name -> payload kind (for the wire MB/s column)

    def best(self, fn) -> float:
        return best_of(self.args.rounds, fn, self.args.seconds)

    def record(self, name: str, kind: str, rate: float) -> None:
        self.results[name], self.kinds[name] = rate, kind

    def print_workload(self) -> None:
        mean_unique = statistics.mean(self.uniques)
        print(f"workload: {IDS_PER_CALL} Zipf(a={ZIPF_A}) ids per call over {TABLE_ROWS:,} rows, dim {DIM}; "
              f"{mean_unique:,.0f} unique per call ({mean_unique / IDS_PER_CALL:.0%})")
        print("payloads per call (request in / reply out):")
        for kind, pairs in self.sizes.items():
            print(f"  {kind:15s} {statistics.mean(a for a, _ in pairs) / 2**10:8.1f} KiB in "
                  f"{statistics.mean(b for _, b in pairs) / 2**10:8.1f} KiB out")

    def populate(self, client) -> None:
        client.create_tables({"emb": TABLE})
        for lo in range(0, TABLE_ROWS, 1 << 17):
            chunk = self.population[lo:lo + (1 << 17)]
            client.assign("emb", chunk, np.full((chunk.size, DIM), 0.01, np.float32))

    def lookup(self, client, i: int, ids=None):
        return client.lookup("emb", (ids or self.batches)[i % 8])

    def apply(self, client, i: int):
        return client.apply_gradients("emb", self.batches[i % 8], self.grads[i % 8])

    def grpc_echo_rate(self, address: str, sizes) -> float:
        import grpc

        from ps.service.server import grpc_options

        channel = grpc.insecure_channel(address, options=grpc_options(512 << 20))
        call = channel.unary_unary(ECHO_METHOD)
        payloads = [struct.pack("<Q", reply) + bytes(req) for req, reply in sizes]
        rate = self.best(lambda i: call(payloads[i % len(payloads)], timeout=30))
        channel.close()
        return rate

    def tcp_echo_rate(self, sizes) -> float:
        conn = socket.create_connection(("127.0.0.1", self.tcp_port))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reply = bytearray(64 << 20)
        frames = [_HDR.pack(req, rep) + bytes(req) for req, rep in sizes]

        def once(i: int) -> None:
            k = i % len(frames)
            conn.sendall(frames[k])
            _recv_exact(conn, memoryview(reply)[: sizes[k][1]])

        rate = self.best(once)
        conn.close()
        return rate

    def one_shard(self, model: str, address: str) -> None:
        """Lookup and ApplyGradients on one shard of `model`, then the echo peers of the same model."""
        from ps.client import PSClient

        with PSClient([address]) as client:
            self.populate(client)
            self.record(f"{model} lookup", "lookup", self.best(lambda i: self.lookup(client, i)))
            self.record(f"{model} apply", "apply", self.best(lambda i: self.apply(client, i)))
        kinds: tuple[str, ...] = ("lookup", "apply", "lookup logical", "apply logical")
        if model == "sync":
            with PSClient([address]) as client:
                self.record("sync lookup uniform", "uniform",
                            self.best(lambda i: self.lookup(client, i, self.uniform)))
            with PSClient([address], float16_lookup=True) as client:
                self.record("sync lookup f16", "f16", self.best(lambda i: self.lookup(client, i)))
            kinds += ("f16", "uniform")
        echo = f"127.0.0.1:{self.echo_ports[model]}"
        for kind in kinds:
            self.record(f"{model} grpc echo ({kind} bytes)", kind, self.grpc_echo_rate(echo, self.sizes[kind]))

    def two_shards_two_threads(self, addrs: list[str]) -> None:
        """Each thread its own client, like two workers."""
        from ps.client import PSClient

        with PSClient(addrs) as client:
            self.populate(client)
        for name, op in (("lookup", self.lookup), ("apply", self.apply)):
            clients = [PSClient(addrs) for _ in range(2)]
            rates = [0.0, 0.0]

            def run(k: int, op=op, clients=clients, rates=rates) -> None:
                rates[k] = self.best(lambda i: op(clients[k], i + k))

            threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.record(f"2 shards x 2 threads {name}", name, sum(rates))
            for c in clients:
                c.close()

    def report(self) -> None:
        mib = 2**20
        wire = {kind: statistics.mean(a + b for a, b in pairs) for kind, pairs in self.sizes.items()}
        # an echo moves the rows its payload holds; our RPCs deliver IDS_PER_CALL rows to the caller
        echo_rows = {kind: IDS_PER_CALL if kind.endswith("logical") else statistics.mean(self.uniques)
                     for kind in self.sizes}
        echo_rows["uniform"] = statistics.mean(self.uniform_uniques)
        print(f"\n{'measurement':44s} {'calls/s':>9s} {'rows/s':>13s} {'wire MB/s':>10s}")
        for name, rate in self.results.items():
            rows = echo_rows[self.kinds[name]] if "echo" in name else IDS_PER_CALL
            print(f"{name:44s} {rate:9.1f} {rate * rows:13,.0f} {rate * wire[self.kinds[name]] / mib:10.1f}")
        print("\nratios (same run; calls/s over calls/s. For the call's payload this equals rows/s over rows/s; "
              "a deduped echo moves only the unique rows):")
        for label, a, b in RATIOS:
            print(f"  {label:66s} {self.results[a] / self.results[b]:6.2f}")


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

    from ps.kernels.threads import passive_kernel_threads
    from services.malloc_tuning import tune_malloc

    tune_malloc()
    passive_kernel_threads()
    children = Children()
    try:
        servers = {m: start_ps(children, 0, 1, m) for m in ("sync", "aio")}
        echo_ports = {m: free_port() for m in ("sync", "aio")}
        echo_procs = [children.start([__file__, "--serve-grpc-echo", m, "--port", str(p)])
                      for m, p in echo_ports.items()]
        tcp_port = free_port()
        tcp_proc = children.start([__file__, "--serve-tcp-echo", "--port", str(tcp_port)])
        two = [start_ps(children, i, 2, "sync") for i in range(2)]
        bench = Bench(args, echo_ports, tcp_port)
        for proc in [p for _a, p in [*servers.values(), *two]] + echo_procs + [tcp_proc]:
            children.wait_ready(proc)
        bench.print_workload()
        for model, (address, _proc) in servers.items():
            bench.one_shard(model, address)
        for kind in ("lookup", "apply", "uniform", "lookup logical", "apply logical"):
            bench.record(f"tcp echo ({kind} bytes)", kind, bench.tcp_echo_rate(bench.sizes[kind]))
        bench.two_shards_two_threads([a for a, _p in two])
    finally:
        children.close()
    bench.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
