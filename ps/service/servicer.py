"""The `ParameterServer` gRPC service: a thin translation between protos and `ShardState`.

Requests arrive as raw bytes and are parsed here, so a garbage or truncated message becomes
INVALID_ARGUMENT naming the message type instead of grpc's generic "Exception deserializing
request". Every request is fully decoded and validated before anything is mutated, so a bad
request leaves the shard unchanged, and no exception ever escapes to kill the process.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from protos import ps_pb2
from ps.config import TableConfig
from ps.errors import CheckpointError, status_of
from ps.service import rpc_metrics as metrics
from ps.service.replied_requests import RepliedRequests
from ps.store.shard_state import ShardState
from ps.store.table import CheckedUpdate, EmbeddingTable
from ps.wire.config_codec import optimizer_from_proto, table_config_from_proto, table_config_to_proto
from ps.wire.fast_messages import (
    APPLY_CLAIM_LIMIT,
    APPLY_GLOBAL_STEP,
    APPLY_UPDATE_TIME,
    CLIENT_ID,
    REQUEST_NUMBER,
    UPDATE_UPDATE_TIME,
    UpdatesView,
    decode_updates,
    encode_lookup_response,
)
from ps.wire.protocol_version import PROTOCOL_VERSION
from ps.wire.tensors import F32, ids_from_bytes, rows_from_bytes

log = logging.getLogger(__name__)

SERVICE = ps_pb2.DESCRIPTOR.services_by_name["ParameterServer"].full_name
_NP_DTYPES = {ps_pb2.FLOAT32: np.float32, ps_pb2.FLOAT16: np.float16}


def _status_of(exc: BaseException) -> grpc.StatusCode:
    return grpc.StatusCode[status_of(exc)]


def _proto_parser(req_cls) -> Callable:
    def parse(raw: bytes):
        try:
            return req_cls.FromString(raw)
        except DecodeError as exc:
            raise ValueError(f"malformed {req_cls.__name__} ({len(raw)} bytes): {exc}") from None

    return parse


def _serialize(response) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


def _info(name: str, table, created: bool = False) -> ps_pb2.TableInfo:
    return ps_pb2.TableInfo(
        name=name, dim=table.dim, segment_dims=list(table.segment_dims),
        config=table_config_to_proto(name, TableConfig.from_dict(table.config)),
        created=created, rows=int(table.size), memory_bytes=int(table.memory_bytes),
    )


def _dense_grads(method: str, items) -> dict[str, np.ndarray]:
    """{name: float32 gradient} from (name, bytes) pairs: whole float32s, each name once."""
    grads: dict[str, np.ndarray] = {}
    for name, values in items:
        if len(values) % 4:
            raise ValueError(f"{method} {name!r}: {len(values)} bytes is not a whole number of float32")
        if name in grads:
            raise ValueError(f"{method}: dense variable {name!r} appears twice")
        grads[name] = np.frombuffer(values, dtype=F32)
    return grads


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class ParameterServerServicer:
    def __init__(self, state: ShardState, server_model: str = "sync", checkpoint_root: str | None = None) -> None:
        """`checkpoint_root` (the shard's --checkpoint-dir): Save and Restore only touch paths inside it, so a
        caller cannot make the shard write or read files anywhere else."""
        self.state = state
        self.server_model = server_model
        self._checkpoint_root = Path(checkpoint_root).resolve() if checkpoint_root else None
        self.requests: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()
        self._shard = str(state.shard_index)
        self._replied: RepliedRequests = RepliedRequests()  # replies of non-idempotent updates
        self._ids_received = {m: metrics.IDS.labels(self._shard, m) for m in ("Lookup", "ApplyGradients", "Assign",
                                                                               "AssignAdd")}

    # -- plumbing -------------------------------------------------------------------------------
    def handler(self) -> grpc.GenericRpcHandler:
        methods = {
            "CreateTables": (_proto_parser(ps_pb2.CreateTablesRequest), self.create_tables),
            "Lookup": (_proto_parser(ps_pb2.LookupRequest), self.lookup),
            # row payloads are read in place (memoryviews of the request), see ps.wire.fast_messages
            "ApplyGradients": (lambda raw: decode_updates(raw, "ApplyGradientsRequest"), self.apply_gradients),
            "Assign": (lambda raw: decode_updates(raw, "UpdateRequest"), self.assign),
            "AssignAdd": (lambda raw: decode_updates(raw, "UpdateRequest"), self.assign_add),
            "Reinitialize": (_proto_parser(ps_pb2.ReinitializeRequest), self.reinitialize),
            "Evict": (_proto_parser(ps_pb2.EvictRequest), self.evict),
            "Save": (_proto_parser(ps_pb2.SaveRequest), self.save),
            "Restore": (_proto_parser(ps_pb2.RestoreRequest), self.restore),
            "DenseCreate": (_proto_parser(ps_pb2.DenseCreateRequest), self.dense_create),
            "DensePull": (_proto_parser(ps_pb2.DensePullRequest), self.dense_pull),
            "DensePush": (_proto_parser(ps_pb2.DensePushRequest), self.dense_push),
            "GlobalStep": (_proto_parser(ps_pb2.GlobalStepRequest), self.global_step),
            "Barrier": (_proto_parser(ps_pb2.BarrierRequest), self.barrier),
            "Stats": (_proto_parser(ps_pb2.StatsRequest), self.stats),
            "Health": (_proto_parser(ps_pb2.HealthRequest), self.health),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._wrap(name, parse, fn),
                request_deserializer=None, response_serializer=_serialize,
            )
            for name, (parse, fn) in methods.items()
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _wrap(self, method: str, parse: Callable, fn: Callable):
        shard = self._shard
        latency = metrics.LATENCY.labels(shard, method)
        succeeded = metrics.REQUESTS.labels(shard, method, grpc.StatusCode.OK.name)  # bound once: most calls

        def call(raw: bytes, context: grpc.ServicerContext):
            start = time.perf_counter()
            with self._count_lock:
                self.requests[method] += 1
            code = grpc.StatusCode.OK
            try:
                return fn(parse(raw))
            except Exception as exc:  # one bad request must never take the shard down
                code = _status_of(exc)
                with self._count_lock:
                    self.errors[method] += 1
                if code is grpc.StatusCode.INTERNAL:
                    log.exception("%s failed", method)
                else:
                    log.info("%s rejected (%s): %s", method, code.name, exc)
                context.abort(code, f"shard {shard}: {method}: {exc}")
            finally:
                latency.observe(time.perf_counter() - start)
                (succeeded if code is grpc.StatusCode.OK else metrics.REQUESTS.labels(shard, method, code.name)).inc()

        return call

    # -- tables -------------------------------------------------------------------------------
    def create_tables(self, request: ps_pb2.CreateTablesRequest) -> ps_pb2.CreateTablesResponse:
        configs = [(t.name, table_config_from_proto(t)) for t in request.tables]
        out = ps_pb2.CreateTablesResponse()
        for name, config in configs:
            table, created = self.state.create_table(name, config)
            out.tables.append(_info(name, table, created))
        return out

    def _owned_ids(self, method: str, items) -> list[tuple[str, EmbeddingTable, np.ndarray]]:
        """(name, table, ids) per requested table, every table and id checked before anything runs."""
        work = []
        for item in items:
            table = self.state.table(item.table)
            ids = ids_from_bytes(item.ids, f"{method} table {item.table!r}")
            self.state.check_owned(item.table, ids)
            work.append((item.table, table, ids))
        return work

    def lookup(self, request: ps_pb2.LookupRequest) -> bytes:
        if request.dtype not in _NP_DTYPES:
            raise ValueError(f"unknown lookup dtype {request.dtype}")
        work = self._owned_ids("Lookup", request.tables)
        np_dtype = _NP_DTYPES[request.dtype]
        dense = self.state.dense_pull(list(request.dense)) if request.dense else []
        rows = [(name, table.lookup(ids, dtype=np_dtype), int(request.dtype), table.dim) for name, table, ids in work]
        self._ids_received["Lookup"].inc(sum(ids.size for _n, _t, ids in work))
        return encode_lookup_response(rows, dense)  # a serialized LookupResponse; the rows are copied once

    def _checked_updates(self, method: str, request: UpdatesView) -> list[tuple[str, CheckedUpdate]]:
        """Decode every table's update and run the table's own checks on it (the only checks its values get:
        this is where they enter the shard); nothing is applied until every table's update passed."""
        gradients = method == "ApplyGradients"
        global_step = request.scalars.get(APPLY_GLOBAL_STEP, 0)
        update_time = request.scalars.get(APPLY_UPDATE_TIME if gradients else UPDATE_UPDATE_TIME, 0)
        work = []
        for item in request.tables:
            where = f"{method} table {item.table!r}"
            table = self.state.table(item.table)
            ids = ids_from_bytes(item.ids, where)
            values = rows_from_bytes(item.values, ids.size, table.dim, where, F32)
            self.state.check_owned(item.table, ids)
            try:
                if gradients:
                    checked = table.check_gradients(ids, values, global_step, update_time,
                                                    list(item.learning_rates) or None)
                else:
                    checked = table.check_values(ids, values, update_time)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"{where}: {exc}") from None
            work.append((item.table, checked))
        self._ids_received[method].inc(sum(c.ids.size for _n, c in work))
        return work

    def apply_gradients(self, request: UpdatesView) -> ps_pb2.UpdateResponse:
        """A step's rows (and dense gradients) for this shard; with a claim_limit, claim the step first and
        apply nothing if it is refused. Every part is checked before the claim. A retry of a request already
        applied gets its reply and applies nothing (replied_requests.py)."""
        return self._once(request, lambda: self._apply_gradients(request))

    def _once(self, request: UpdatesView | ps_pb2.DensePushRequest | ps_pb2.GlobalStepRequest, run: Callable):
        """`run()` unless this request (its client id and number) was applied already: then its reply."""
        if isinstance(request, UpdatesView):
            client, number = request.scalars.get(CLIENT_ID, 0), request.scalars.get(REQUEST_NUMBER, 0)
        else:
            client, number = request.client_id, request.request_number
        return self._replied.once(client, number, run)

    def _apply_gradients(self, request: UpdatesView) -> ps_pb2.UpdateResponse:
        work = self._checked_updates("ApplyGradients", request)
        dense = self.state.check_dense(_dense_grads("ApplyGradients", request.dense),
                                       request.scalars.get(APPLY_GLOBAL_STEP, 0)) if request.dense else []
        limit = request.scalars.get(APPLY_CLAIM_LIMIT, 0)
        out = ps_pb2.UpdateResponse()
        if limit > 0:
            out.global_step, out.claimed = self.state.increment_global_step(1, limit)
            if not out.claimed:
                return out
        for name, checked in work:
            checked.table.apply_checked(checked)
            out.rows[name] = checked.ids.size
        if dense:
            self.state.apply_dense(dense)
        return out

    def assign(self, request: UpdatesView) -> ps_pb2.UpdateResponse:
        work = self._checked_updates("Assign", request)
        for _name, checked in work:
            checked.table.write_checked(checked, add=False)
        return ps_pb2.UpdateResponse(rows={name: c.ids.size for name, c in work})

    def assign_add(self, request: UpdatesView) -> ps_pb2.UpdateResponse:
        return self._once(request, lambda: self._assign_add(request))

    def _assign_add(self, request: UpdatesView) -> ps_pb2.UpdateResponse:
        work = self._checked_updates("AssignAdd", request)
        for _name, checked in work:
            checked.table.write_checked(checked, add=True)
        return ps_pb2.UpdateResponse(rows={name: c.ids.size for name, c in work})

    def reinitialize(self, request: ps_pb2.ReinitializeRequest) -> ps_pb2.UpdateResponse:
        work = self._owned_ids("Reinitialize", request.tables)
        for _name, table, ids in work:
            table.reinitialize(ids, update_time=request.update_time)
        return ps_pb2.UpdateResponse(rows={name: ids.size for name, _t, ids in work})

    def evict(self, request: ps_pb2.EvictRequest) -> ps_pb2.EvictResponse:
        return ps_pb2.EvictResponse(removed=self.state.evict(list(request.tables)))

    # -- checkpoints ----------------------------------------------------------------------------
    def _check_checkpoint_path(self, method: str, path: str) -> None:
        if not path:
            raise ValueError(f"{method}: checkpoint_path is empty")
        if self._checkpoint_root is not None and not Path(path).resolve().is_relative_to(self._checkpoint_root):
            raise ValueError(f"{method}: {path!r} is outside this shard's checkpoint directory {self._checkpoint_root}")

    def save(self, request: ps_pb2.SaveRequest) -> ps_pb2.SaveResponse:
        self._check_checkpoint_path("Save", request.checkpoint_path)
        path, rows = self.state.save(request.checkpoint_path, request.step)
        return ps_pb2.SaveResponse(shard_path=str(path), rows=rows, global_step=self.state.global_step)

    def restore(self, request: ps_pb2.RestoreRequest) -> ps_pb2.RestoreResponse:
        self._check_checkpoint_path("Restore", request.checkpoint_path)
        try:
            result = self.state.restore(request.checkpoint_path)
        except CheckpointError:
            raise
        except Exception as exc:  # whatever the store raised on a corrupt or truncated file
            raise CheckpointError(f"cannot restore {request.checkpoint_path}: {exc}") from exc
        return ps_pb2.RestoreResponse(rows=result["rows"], dense=result["dense"], global_step=result["global_step"])

    # -- dense ----------------------------------------------------------------------------------
    def dense_create(self, request: ps_pb2.DenseCreateRequest) -> ps_pb2.DenseCreateResponse:
        decoded = []
        for var in request.variables:
            initial = None
            if var.initial_value:
                initial = rows_from_bytes(var.initial_value, 1, int(np.prod(var.shape or [0])),
                                          f"DenseCreate {var.name!r} initial_value", F32)
            decoded.append((var.name, list(var.shape), optimizer_from_proto(var.optimizer), initial))
        created = {}
        for name, shape, optimizer, initial in decoded:
            created[name] = self.state.create_dense(name, shape, optimizer, initial)
        return ps_pb2.DenseCreateResponse(created=created)

    def dense_pull(self, request: ps_pb2.DensePullRequest) -> ps_pb2.DensePullResponse:
        out = ps_pb2.DensePullResponse()
        for name, shape, values in self.state.dense_pull(list(request.names)):
            out.values.add(name=name, shape=shape, values=values.astype(F32).tobytes())
        return out

    def dense_push(self, request: ps_pb2.DensePushRequest) -> ps_pb2.DensePushResponse:
        return self._once(request, lambda: self._dense_push(request))

    def _dense_push(self, request: ps_pb2.DensePushRequest) -> ps_pb2.DensePushResponse:
        grads = _dense_grads("DensePush", [(g.name, g.values) for g in request.grads])
        lr = request.learning_rate if request.HasField("learning_rate") else None
        self.state.dense_push(grads, request.global_step, lr)
        return ps_pb2.DensePushResponse()

    def global_step(self, request: ps_pb2.GlobalStepRequest) -> ps_pb2.GlobalStepResponse:
        if not request.increment:  # a read
            return self._global_step(request)
        return self._once(request, lambda: self._global_step(request))

    def _global_step(self, request: ps_pb2.GlobalStepRequest) -> ps_pb2.GlobalStepResponse:
        limit = request.limit if request.HasField("limit") else None
        step, applied = self.state.increment_global_step(request.increment, limit)
        return ps_pb2.GlobalStepResponse(global_step=step, applied=applied)

    def barrier(self, request: ps_pb2.BarrierRequest) -> ps_pb2.BarrierResponse:
        arrived, expected = self.state.arrive(request.name, request.participant, request.expected, request.note)
        return ps_pb2.BarrierResponse(arrived=arrived, expected=expected, notes=self.state.notes(request.name))

    # -- introspection --------------------------------------------------------------------------
    def stats(self, request: ps_pb2.StatsRequest) -> ps_pb2.StatsResponse:
        tables = [_info(n, t) for n, t in sorted(self.state.tables.items())]
        dense = [_info(n, v.table) for n, v in sorted(self.state.dense.items())]
        return ps_pb2.StatsResponse(
            shard_index=self.state.shard_index, num_shards=self.state.num_shards, tables=tables, dense=dense,
            total_rows=sum(t.rows for t in tables), total_memory_bytes=sum(t.memory_bytes for t in tables + dense),
            rss_bytes=_rss_bytes(), requests=self._counts(self.requests), errors=self._counts(self.errors),
        )

    def _counts(self, counter: collections.Counter[str]) -> dict[str, int]:
        with self._count_lock:
            return dict(counter)

    def health(self, request: ps_pb2.HealthRequest) -> ps_pb2.HealthResponse:
        s = self.state
        return ps_pb2.HealthResponse(
            shard_index=s.shard_index, num_shards=s.num_shards, serving=True, pid=os.getpid(),
            uptime_s=time.time() - s.started, server_model=self.server_model, num_tables=len(s.tables),
            num_dense=len(s.dense), restored_from=s.restored_from, global_step=s.global_step,
            protocol_version=PROTOCOL_VERSION,
        )

