"""Fuzzing every gRPC method of a real `monolith ps` process with raw request bytes over a real channel:
random bytes, and valid requests truncated, bit-flipped, given huge lengths, NaN/Inf values or wrong dims.

Each call must come back with a status within its deadline (the shard never hangs), the shard must stay
alive, a refusal must be a status of the error vocabulary (never INTERNAL, which would be an unhandled
bug), and a refused call must leave the shard exactly as it was (tables, rows, dense variables, global
step). Bounded for `make test` (the "ci" profile); `make fuzz` runs the "fuzz" profile. The shard runs with
an address-space limit, so a request that asks for absurd memory fails there instead of on the machine.
"""
from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protos import ps_pb2
from ps.kernels.threads import ENV as KERNEL_THREADS_ENV
from ps.service.servicer import SERVICE
from services.malloc_tuning import ENV as MALLOC_ENV
from services.ports import free_port
from tests.ps_cluster import wait_ready

pytestmark = pytest.mark.slow


ADDRESS_SPACE_LIMIT = 6 << 30
CALL_TIMEOUT_S = 20.0
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}
TABLE, DIM, IDS = "t", 4, np.array([1, 2, 5, -3], np.int64)
DENSE = "w"


def _f32(values) -> bytes:
    return np.asarray(values, "<f4").tobytes()


def _ids(values) -> bytes:
    return np.asarray(values, "<i8").tobytes()


def _table_config(name: str = TABLE, dim: int = DIM) -> ps_pb2.TableConfig:
    sgd = ps_pb2.Optimizer(type="sgd", params=ps_pb2.Params(floats={"learning_rate": 0.5}))
    segment = ps_pb2.Segment(dim=dim, optimizer=sgd, initializer=ps_pb2.Initializer(type="zeros"))
    return ps_pb2.TableConfig(name=name, segments=[segment], initial_capacity=16, filter_capacity=1024)


def _update(values) -> ps_pb2.TableUpdate:
    return ps_pb2.TableUpdate(table=TABLE, ids=_ids(IDS), values=_f32(values))


def seeds(checkpoint_dir: str) -> dict[str, list[bytes]]:
    """Valid requests of every method, plus the hostile variants a mutation would rarely find by itself."""
    rows = np.full((len(IDS), DIM), 0.25, np.float32)
    nan, inf = rows.copy(), rows.copy()
    nan[1, 2], inf[2, 0] = np.nan, -np.inf
    wrong_dim = np.ones((len(IDS), DIM + 1), np.float32)
    sgd = ps_pb2.Optimizer(type="sgd", params=ps_pb2.Params(floats={"learning_rate": 0.1}))
    updates = [[_update(rows)], [_update(nan)], [_update(inf)], [_update(wrong_dim)]]
    out: dict[str, list[Any]] = {
        "CreateTables": [ps_pb2.CreateTablesRequest(tables=[_table_config("u", 2)]),
                         ps_pb2.CreateTablesRequest(tables=[_table_config("v", 1 << 40)])],
        "Lookup": [ps_pb2.LookupRequest(tables=[ps_pb2.TableIds(table=TABLE, ids=_ids(IDS))]),
                   ps_pb2.LookupRequest(tables=[ps_pb2.TableIds(table=TABLE, ids=b"\x01\x02\x03")])],
        "ApplyGradients": [ps_pb2.ApplyGradientsRequest(tables=u, global_step=3) for u in updates],
        "Assign": [ps_pb2.UpdateRequest(tables=u) for u in updates],
        "AssignAdd": [ps_pb2.UpdateRequest(tables=u) for u in updates],
        "Reinitialize": [ps_pb2.ReinitializeRequest(tables=[ps_pb2.TableIds(table=TABLE, ids=_ids(IDS))])],
        "Evict": [ps_pb2.EvictRequest()],
        "Save": [ps_pb2.SaveRequest(checkpoint_path=f"{checkpoint_dir}/ckpt-7", step=7),
                 ps_pb2.SaveRequest(checkpoint_path="/etc/monolith-fuzz", step=7)],
        "Restore": [ps_pb2.RestoreRequest(checkpoint_path=f"{checkpoint_dir}/ckpt-7"),
                    ps_pb2.RestoreRequest(checkpoint_path="/etc")],
        "DenseCreate": [ps_pb2.DenseCreateRequest(variables=[ps_pb2.DenseVariable(name=n, shape=s, optimizer=sgd)])
                        for n, s in (("x", [2, 3]), ("y", [1 << 31, 1 << 20]))],
        "DensePull": [ps_pb2.DensePullRequest(names=[DENSE])],
        "DensePush": [ps_pb2.DensePushRequest(grads=[ps_pb2.DenseGrad(name=DENSE, values=_f32([np.nan] * 6))]),
                      ps_pb2.DensePushRequest(grads=[ps_pb2.DenseGrad(name=DENSE, values=_f32([1.0] * 5))])],
        "GlobalStep": [ps_pb2.GlobalStepRequest(increment=1), ps_pb2.GlobalStepRequest(increment=-(1 << 62))],
        "Barrier": [ps_pb2.BarrierRequest(name="b", participant="p", expected=2)],
        "Stats": [ps_pb2.StatsRequest()],
        "Health": [ps_pb2.HealthRequest()],
    }
    return {m: [r.SerializeToString() for r in reqs] for m, reqs in out.items()}


def _huge_length(raw: bytes) -> bytes:
    """The first length-delimited field claims ~2^62 bytes."""
    return raw[:1] + bytes([0xFF] * 8 + [0x3F]) + raw[2:] if raw and raw[0] & 7 == 2 else raw


@st.composite
def mutated(draw, base: bytes) -> bytes:
    kind = draw(st.sampled_from(["as is", "truncated", "flipped", "huge length", "random", "appended"]))
    if kind == "truncated" and base:
        return base[:draw(st.integers(0, len(base) - 1))]
    if kind == "flipped" and base:
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == "huge length":
        return _huge_length(base)
    if kind == "random":
        return draw(st.binary(max_size=64))
    if kind == "appended":  # an extra field, of any wire type, after a valid message
        return base + draw(st.binary(min_size=1, max_size=16))
    return base


class Shard:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)

    def call(self, method: str, raw: bytes) -> tuple[grpc.StatusCode, bytes]:
        fn = self.channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=None, response_deserializer=None)
        try:
            return grpc.StatusCode.OK, fn(raw, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            return exc.code(), (exc.details() or "").encode()

    def ok(self, method: str, request) -> bytes:
        code, reply = self.call(method, request.SerializeToString())
        assert code is grpc.StatusCode.OK, (method, code, reply)
        return reply

    def state(self) -> tuple:
        """Everything a refused call must not change, read with valid calls."""
        stats = ps_pb2.StatsResponse.FromString(self.ok("Stats", ps_pb2.StatsRequest()))
        tables = sorted((t.name, t.rows, t.config.SerializeToString(deterministic=True)) for t in stats.tables)
        probe = [ps_pb2.TableIds(table=t.name, ids=_ids(IDS)) for t in stats.tables]
        rows = self.ok("Lookup", ps_pb2.LookupRequest(tables=probe))
        dense = self.ok("DensePull", ps_pb2.DensePullRequest())
        step = ps_pb2.GlobalStepResponse.FromString(self.ok("GlobalStep", ps_pb2.GlobalStepRequest())).global_step
        barrier = self.ok("Barrier", ps_pb2.BarrierRequest(name="b", expected=2))
        return tables, rows, dense, step, barrier


@pytest.fixture(scope="module")
def fuzz_shard(module_processes, tmp_path_factory):
    checkpoint_dir = str(tmp_path_factory.mktemp("fuzz-checkpoints"))
    args = ["launch.cli", "ps", "--port", str(free_port()), "--shard-index", "0", "--num-shards", "1",
            "--grace-s", "2", "--checkpoint-dir", checkpoint_dir]
    limited = (f"import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE_LIMIT}, "
               f"{ADDRESS_SPACE_LIMIT})); sys.argv = {args!r}; runpy.run_module('launch.cli', run_name='__main__')")
    proc = module_processes.start(["-c", limited], env=dict(MALLOC_ENV, **KERNEL_THREADS_ENV), name="fuzz-ps")
    ready = wait_ready(module_processes, proc)
    shard = Shard(ready.address)
    shard.ok("CreateTables", ps_pb2.CreateTablesRequest(tables=[_table_config()]))
    shard.ok("Assign", ps_pb2.UpdateRequest(tables=[_update(np.arange(len(IDS) * DIM, dtype=np.float32) / 7)]))
    sgd = ps_pb2.Optimizer(type="sgd", params=ps_pb2.Params(floats={"learning_rate": 0.1}))
    shard.ok("DenseCreate", ps_pb2.DenseCreateRequest(variables=[ps_pb2.DenseVariable(
        name=DENSE, shape=[2, 3], optimizer=sgd, initial_value=_f32(np.linspace(-1, 1, 6)))]))
    yield proc, shard, seeds(checkpoint_dir)
    shard.channel.close()


METHODS = sorted(seeds("/x"))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_answers_hostile_bytes_with_a_status_and_refusals_change_nothing(fuzz_shard, method):
    proc, shard, all_seeds = fuzz_shard
    outcomes: dict[str, int] = {}

    @given(data=st.data())
    def one(data):
        raw = data.draw(mutated(data.draw(st.sampled_from(all_seeds[method]))))
        before = shard.state()
        code, detail = shard.call(method, raw)
        assert proc.poll() is None, f"{method}: the shard died on {raw!r}"
        outcomes[code.name] = outcomes.get(code.name, 0) + 1
        if code is grpc.StatusCode.OK:
            return
        assert code in REFUSALS, f"{method}: {code.name} ({detail!r}) for {raw!r}"
        assert shard.state() == before, f"{method}: a refused call ({code.name}: {detail!r}) changed the shard"

    one()
    assert sum(outcomes.values()) > 0
    print(f"{method}: {outcomes}")


def test_huge_length_prefix_is_refused_not_allocated(fuzz_shard):
    """A length field claiming 2^62 bytes is a parse error, answered at once."""
    _proc, shard, _ = fuzz_shard
    raw = _huge_length(ps_pb2.LookupRequest(tables=[ps_pb2.TableIds(table=TABLE, ids=_ids(IDS))]).SerializeToString())
    code, _ = shard.call("Lookup", raw)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
