"""`PSClient`: the only way workers (and any other Python process) talk to the PS shards.

Shard i is `addresses[i]`; ids go to shard `floormod(id, n)`, dense variables to `md5(name) mod n`.
Each call dedupes ids per table, sends one RPC per shard for all tables at once (in parallel: the calling
thread and a few persistent threads make blocking calls, see `_call_shards`), and puts the rows back in the
caller's order.
Bad input raises `ValueError` before anything is sent. Transient failures (UNAVAILABLE, and deadline
overruns of idempotent calls) are retried with exponential backoff; a shard that stays down raises
`PSUnavailable` naming the shard and its address. A status the shard answers with becomes the class of
`ps.errors` for it.

Checkpoints (`save`/`restore`) go through `ps.persist.coordinator`, which assumes the client and the
shards see the same filesystem (local disk or a shared mount), as the original's HDFS checkpoints do.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import random
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from protos import ps_pb2, ps_pb2_grpc
from ps.client.routing import Routed, route, sum_duplicates
from ps.config import ClientConfig, OptimizerConfig, TableConfig
from ps.errors import BarrierTimeout, IncompatibleShard, PSError, PSUnavailable, error_for
from ps.kernels.hash_index import all_finite
from ps.kernels.threads import passive_kernel_threads
from ps.persist.checkpoint import StreamOffsets
from ps.persist.coordinator import CheckpointCoordinator
from ps.sharding import dense_owner
from ps.wire.config_codec import optimizer_to_proto, table_config_from_proto, table_config_to_proto
from ps.wire.fast_messages import (
    APPLY_CLAIM_LIMIT,
    APPLY_GLOBAL_STEP,
    APPLY_UPDATE_TIME,
    CLIENT_ID,
    REQUEST_NUMBER,
    UPDATE_UPDATE_TIME,
    decode_lookup_response,
    encode_updates,
)
from ps.wire.protocol_version import MIN_SHARD_VERSION
from ps.wire.tensors import F16, F32, IDS, rows_from_bytes
from services.malloc_tuning import tune_malloc
from services.transport_security import TransportSecurity

log = logging.getLogger(__name__)

_RETRY_ALWAYS = {grpc.StatusCode.UNAVAILABLE}
_IDEMPOTENT = {"Lookup", "Health", "Stats", "DensePull", "CreateTables", "DenseCreate", "Restore", "Evict", "Barrier"}


@dataclass(frozen=True)
class TableMeta:
    dim: int
    segment_dims: tuple[int, ...]
    counts_occurrences: bool = False  # admission: the PS must see every occurrence, so no client dedupe

    @classmethod
    def of(cls, info: ps_pb2.TableInfo) -> TableMeta:
        return cls(int(info.dim), tuple(int(d) for d in info.segment_dims), info.config.occurrence_threshold > 0)


def _as_ids(ids: Any, where: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, dtype=IDS)
    if arr.ndim != 1:
        raise ValueError(f"{where}: ids must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "iu" or arr.dtype == np.bool_:
        raise ValueError(f"{where}: ids must be integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64:
        return arr.view(IDS)  # the same 64 bits
    return np.ascontiguousarray(arr, dtype=IDS)


def _as_rows(values: Any, n: int, dim: int, where: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: values must be numeric: {exc}") from None
    if arr.shape != (n, dim):
        raise ValueError(f"{where}: expected shape ({n}, {dim}) for {n} ids of dim {dim}, got {arr.shape}")
    arr = np.ascontiguousarray(arr)
    if arr.size and not all_finite(arr):
        r, c = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{where}: values contain NaN/Inf (row {r}, column {c})")
    return arr


class PSClient:
    def __init__(self, addresses: Iterable[str], config: ClientConfig | None = None,
                 security: TransportSecurity | None = None, **overrides: Any) -> None:
        """`config` (default `ClientConfig()`) with any of its fields overridden by keyword; `security` (default:
        from this process's environment, see services/transport_security.py) says how to reach the shards."""
        self.addresses = list(addresses)
        if not self.addresses or not all(isinstance(a, str) and a for a in self.addresses):
            raise ValueError(f"addresses must be a non-empty list of host:port strings, got {addresses!r}")
        self.config = dataclasses.replace(config or ClientConfig(), **overrides)
        tune_malloc()
        passive_kernel_threads()
        self.num_shards = len(self.addresses)
        options = [
            ("grpc.max_receive_message_length", self.config.max_message_bytes),
            ("grpc.max_send_message_length", self.config.max_message_bytes),
            # reconnect quickly after a shard restarts (grpc's default backoff grows to 120 s)
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self.security = TransportSecurity.from_environ() if security is None else security
        self._channels = [self.security.channel(a, options) for a in self.addresses]
        self._stubs = [self._stub(c) for c in self._channels]
        self._shard_calls = ThreadPoolExecutor(max_workers=4 * max(1, self.num_shards - 1),
                                               thread_name_prefix="ps-client-shard")
        """Calls to shards other than a request's first (`_call_shards`); room for a few concurrent callers."""
        self._tables: dict[str, TableMeta] = {}
        self._dense_shapes: dict[str, tuple[int, ...]] = {}
        # names every non-idempotent update, so a shard applies a retried one once (see _numbered)
        self._client_id = random.getrandbits(62) + 1
        self._request_numbers = itertools.count(1)

    @staticmethod
    def _stub(channel: grpc.Channel) -> ps_pb2_grpc.ParameterServerStub:
        """The generated stub, except that row payloads skip protobuf objects (see ps.wire.fast_messages):
        Lookup replies are decoded in place and update requests arrive here already encoded."""
        stub = ps_pb2_grpc.ParameterServerStub(channel)
        service = ps_pb2.DESCRIPTOR.services_by_name["ParameterServer"].full_name
        stub.Lookup = channel.unary_unary(f"/{service}/Lookup",
                                          request_serializer=ps_pb2.LookupRequest.SerializeToString,
                                          response_deserializer=decode_lookup_response)
        for method in ("ApplyGradients", "Assign", "AssignAdd"):
            setattr(stub, method, channel.unary_unary(f"/{service}/{method}", request_serializer=None,
                                                      response_deserializer=ps_pb2.UpdateResponse.FromString))
        return stub

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        self._shard_calls.shutdown(wait=False)
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> PSClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_until_ready(self, timeout_s: float = 60.0) -> None:
        """Block until every shard answers Health and reports the shard index/count this client expects and
        a protocol version it can work with (`IncompatibleShard` otherwise)."""
        deadline = time.monotonic() + timeout_s
        for shard, stub in enumerate(self._stubs):
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PSUnavailable(f"PS shard {shard} ({self.addresses[shard]}) not ready after {timeout_s}s",
                                        shard, self.addresses[shard], grpc.StatusCode.UNAVAILABLE)
                try:
                    h = stub.Health(ps_pb2.HealthRequest(), timeout=min(remaining, 5.0), wait_for_ready=True)
                    break
                except grpc.RpcError as exc:
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise self._error(shard, "Health", exc) from None
                    time.sleep(0.05)
            if (h.shard_index, h.num_shards) != (shard, self.num_shards):
                raise PSError(f"{self.addresses[shard]} is shard {h.shard_index} of {h.num_shards}, but this client "
                              f"expects shard {shard} of {self.num_shards}", shard, self.addresses[shard])
            if h.protocol_version < MIN_SHARD_VERSION:
                raise IncompatibleShard(
                    f"PS shard {shard} ({self.addresses[shard]}) speaks PS protocol version {h.protocol_version}, "
                    f"older than the {MIN_SHARD_VERSION} this client needs (0: from before versioning): upgrade the "
                    f"PS processes before the workers", shard, self.addresses[shard])

    # -- RPC plumbing ----------------------------------------------------------------------------
    def _error(self, shard: int, method: str, exc: grpc.RpcError, attempts: int = 1) -> PSError:
        code = exc.code()
        cls = error_for(code.name)
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        return cls(f"PS shard {shard} ({self.addresses[shard]}) {method} failed{tried}: {code.name}: {exc.details()}",
                   shard, self.addresses[shard], code)

    def _retryable(self, method: str, code: grpc.StatusCode) -> bool:
        return code in _RETRY_ALWAYS or (method in _IDEMPOTENT and code is grpc.StatusCode.DEADLINE_EXCEEDED)

    def _timeout(self, method: str) -> float:
        return self.config.checkpoint_timeout_s if method in ("Save", "Restore") else self.config.timeout_s

    def _call_with_retries(self, shard: int, method: str, request, first_error: grpc.RpcError | None = None):
        error, attempt = first_error, int(first_error is not None)
        while True:
            if error is not None:
                if attempt > self.config.retries or not self._retryable(method, error.code()):
                    raise self._error(shard, method, error, attempt) from None
                cfg = self.config
                delay = min(cfg.max_backoff_s, cfg.backoff_s * 2 ** (attempt - 1)) * (0.75 + 0.5 * random.random())
                log.warning("PS shard %d (%s) %s: %s; retry %d/%d in %.2fs", shard, self.addresses[shard], method,
                            error.code().name, attempt, self.config.retries, delay)
                time.sleep(delay)
            try:
                return getattr(self._stubs[shard], method)(request, timeout=self._timeout(method))
            except grpc.RpcError as exc:
                error = exc
                attempt += 1

    def _call_shards(self, method: str, requests: Mapping[int, Any]) -> dict[int, Any]:
        """One call per shard, all in flight at once; returns responses by shard. The first shard's call is
        made by the calling thread, the others by `_shard_calls`' threads, each a blocking call (with its
        retries): a gRPC future would start a thread to poll its channel whenever none of the channel's
        calls is in flight, i.e. on nearly every call of a client that waits for its replies."""
        if not requests:
            return {}
        (first, first_request), *rest = requests.items()
        futures = {shard: self._shard_calls.submit(self._call_with_retries, shard, method, request)
                   for shard, request in rest}
        out, failure = {}, None
        try:
            out[first] = self._call_with_retries(first, method, first_request)
        except PSError as exc:
            failure = exc
        for shard, fut in futures.items():
            try:
                out[shard] = fut.result()
            except PSError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return out

    def _check_size(self, what: str, shard: int, nbytes: int) -> None:
        if nbytes > self.config.max_message_bytes:
            raise ValueError(f"{what} for shard {shard} would be {nbytes} bytes, above max_message_bytes "
                             f"{self.config.max_message_bytes}: split the batch")

    # -- tables ----------------------------------------------------------------------------------
    def create_tables(self, configs: Mapping[str, dict[str, Any]]) -> dict[str, TableMeta]:
        """Create tables on every shard (idempotent; a different config for an existing name is an error)."""
        if not isinstance(configs, Mapping) or not configs:
            raise ValueError("create_tables expects a non-empty {name: config} dict")
        request = ps_pb2.CreateTablesRequest()
        for name, config in configs.items():
            try:
                request.tables.append(table_config_to_proto(name, TableConfig.of(config)))
            except (ValueError, TypeError) as exc:  # the user's dict is checked here, before anything is sent
                raise ValueError(f"table {name!r}: {exc}") from None
        responses = self._call_shards("CreateTables", {s: request for s in range(self.num_shards)})
        for info in responses[0].tables:
            self._tables[info.name] = TableMeta.of(info)
        return {name: self._tables[name] for name in configs}

    def table_meta(self, table: str) -> TableMeta:
        meta = self._tables.get(table)
        if meta is None:
            for info in self._call_with_retries(0, "Stats", ps_pb2.StatsRequest()).tables:
                self._tables[info.name] = TableMeta.of(info)
            meta = self._tables.get(table)
        if meta is None:
            raise ValueError(f"unknown table {table!r} (known: {sorted(self._tables)}); create it with create_tables")
        return meta

    def lookup(self, table: str, ids: Any) -> np.ndarray:
        return self.lookup_many({table: ids})[table]

    def lookup_many(self, ids_by_table: Mapping[str, Any], dedupe: bool = True) -> dict[str, np.ndarray]:
        """Rows for every table in input order (absent ids read as zeros), one RPC per shard.

        `dedupe=False`: the caller's ids are already distinct (the worker deduplicated them), so they are
        routed as they are instead of being deduplicated a second time."""
        return self.lookup_step(ids_by_table, (), dedupe)[0]

    def lookup_step(self, ids_by_table: Mapping[str, Any], dense_names: Iterable[str],
                    dedupe: bool = True) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """A training step's reads: `lookup_many`'s rows and the current values of the dense variables
        `dense_names` (read-only arrays), still one RPC per shard."""
        dense_by_shard: dict[int, list[str]] = {}
        for name in dense_names:
            dense_by_shard.setdefault(dense_owner(name, self.num_shards), []).append(name)
        dtype = ps_pb2.FLOAT16 if self.config.float16_lookup else ps_pb2.FLOAT32
        wire = F16 if self.config.float16_lookup else F32
        plans: dict[str, tuple[TableMeta, Routed]] = {}
        for table, ids in ids_by_table.items():
            meta = self.table_meta(table)
            plans[table] = (meta, route(_as_ids(ids, f"lookup {table!r}"), self.num_shards, dedupe=dedupe))
        requests = {}
        for s in range(self.num_shards):
            req = ps_pb2.LookupRequest(dtype=dtype)
            reply_bytes = 0
            for table, (meta, routed) in plans.items():
                ids = routed.shard_ids(s)
                if ids.size:
                    req.tables.add(table=table, ids=ids.tobytes())
                    reply_bytes += ids.size * meta.dim * wire.itemsize
            if s in dense_by_shard:
                req.dense.extend(dense_by_shard[s])
            if req.tables or req.dense:
                self._check_size("lookup reply", s, reply_bytes)
                requests[s] = req
        responses = self._call_shards("Lookup", requests) if requests else {}
        return self._rows_of(plans, responses, wire), self._dense_of(responses, dense_by_shard)

    def _rows_of(self, plans: Mapping[str, tuple[TableMeta, Routed]], responses: Mapping[int, Any],
                 wire: np.dtype) -> dict[str, np.ndarray]:
        replies = {s: {item.table: item for item in resp.tables} for s, resp in responses.items()}
        out = {}
        for table, (meta, routed) in plans.items():
            parts = []
            for s in range(self.num_shards):
                n = routed.count(s)
                if n:
                    item = replies[s].get(table)
                    if item is None:
                        raise PSError(f"PS shard {s} ({self.addresses[s]}) returned no rows for {table!r}",
                                      s, self.addresses[s])
                    parts.append((s, rows_from_bytes(item.values, n, meta.dim,
                                                     f"Lookup reply from shard {s} for {table!r}", wire)))
            out[table] = routed.assemble(parts, meta.dim)
        return out

    def _dense_values(self, values: Iterable[Any], where: str) -> dict[str, np.ndarray]:
        """{name: array} of DenseValue messages (read-only views); remembers each variable's shape, which
        gradient pushes are checked against."""
        out = {}
        for v in values:
            shape = tuple(v.shape)
            out[v.name] = rows_from_bytes(v.values, 1, math.prod(shape), f"{where} {v.name!r}").reshape(shape)
            self._dense_shapes[v.name] = shape
        return out

    def _dense_of(self, responses: Mapping[int, Any], wanted: Mapping[int, list[str]]) -> dict[str, np.ndarray]:
        dense = {}
        for s, resp in responses.items():
            dense.update(self._dense_values(resp.dense, f"Lookup reply from shard {s} for dense"))
        for s, names in wanted.items():
            missing = [n for n in names if n not in dense]
            if missing:
                raise PSError(f"PS shard {s} ({self.addresses[s]}) returned no values for dense variables {missing}",
                              s, self.addresses[s])
        return dense

    def _updates(self, method: str, updates: Mapping[str, tuple[Any, Any]], dedupe: bool, scalars: dict[int, int],
                 learning_rates: Mapping[str, Any] | None = None) -> dict[int, bytes]:
        """Validate {table: (ids, values)} and encode one request per shard (nothing is sent here).

        `scalars` are the request's int64 fields by number (see ps.wire.fast_messages.encode_updates)."""
        return {s: encode_updates(items, scalars)
                for s, items in self._update_items(method, updates, dedupe, learning_rates).items()}

    def _numbered(self, request):
        """A non-idempotent update's request (a proto, or an encoded one's scalars) with this client's id and a
        new request number: a retry resends them, and a shard that applied the request already answers it with
        the first reply (ps/service/replied_requests.py)."""
        number = next(self._request_numbers)
        if isinstance(request, dict):
            return {**request, CLIENT_ID: self._client_id, REQUEST_NUMBER: number}
        request.client_id, request.request_number = self._client_id, number
        return request

    def _update_items(self, method: str, updates: Mapping[str, tuple[Any, Any]], dedupe: bool,
                      learning_rates: Mapping[str, Any] | None = None) -> dict[int, list]:
        """Validated {table: (ids, values)} as `encode_updates` items per shard."""
        per_shard: dict[int, list] = {}
        sizes: dict[int, int] = {}
        learning_rates = learning_rates or {}
        unknown = set(learning_rates) - set(updates)
        if unknown:
            raise ValueError(f"{method}: learning_rates for tables without updates: {sorted(unknown)}")
        for table, pair in updates.items():
            where = f"{method} {table!r}"
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise ValueError(f"{where}: expected an (ids, values) pair")
            meta = self.table_meta(table)
            ids = _as_ids(pair[0], where)
            values = _as_rows(pair[1], ids.size, meta.dim, where)
            lrs = learning_rates.get(table)
            if lrs is not None:
                lrs = [float(x) for x in np.atleast_1d(np.asarray(lrs, dtype=np.float64))]
                if len(lrs) != len(meta.segment_dims) or not all(math.isfinite(x) and x >= 0 for x in lrs):
                    raise ValueError(f"{where}: learning_rates must be {len(meta.segment_dims)} finite non-negative "
                                     f"floats (one per segment), got {lrs}")
            # a table with admission counts occurrences: send every occurrence (the PS sums duplicates itself)
            table_dedupe = dedupe and not meta.counts_occurrences
            routed = route(ids, self.num_shards, dedupe=table_dedupe)
            if table_dedupe:
                values = sum_duplicates(routed, values)
            for s in range(self.num_shards):
                pos = routed.positions(s)
                shard_ids = routed.unique[pos]
                if shard_ids.size:
                    vals = values[pos]
                    sizes[s] = sizes.get(s, 0) + shard_ids.nbytes + vals.nbytes
                    self._check_size(f"{method} request", s, sizes[s])
                    per_shard.setdefault(s, []).append((table, shard_ids, vals, lrs))
        return per_shard

    def apply_gradients(self, table: str, ids: Any, grads: Any, global_step: int = 0,
                        learning_rates: Any = None, update_time: int = 0) -> None:
        """Duplicate ids' gradients are summed (here, or on the PS for tables with admission, which must
        count every occurrence), then the table's optimizer runs once per id."""
        lrs = None if learning_rates is None else {table: learning_rates}
        self.apply_gradients_many({table: (ids, grads)}, global_step, lrs, update_time)

    def apply_gradients_many(self, grads_by_table: Mapping[str, tuple[Any, Any]], global_step: int = 0,
                             learning_rates: Mapping[str, Any] | None = None, update_time: int = 0,
                             dedupe: bool = True) -> None:
        """`apply_gradients` for several tables in one RPC per shard. `dedupe=False`: send the ids as given
        (the caller summed its duplicates already, or sends every occurrence on purpose; the PS sums
        whatever repeats it receives)."""
        requests = self._updates("ApplyGradients", grads_by_table, dedupe,
                                 self._numbered({APPLY_GLOBAL_STEP: int(global_step),
                                                 APPLY_UPDATE_TIME: int(update_time)}),
                                 learning_rates)
        if requests:
            self._call_shards("ApplyGradients", requests)

    def push_step(self, grads_by_table: Mapping[str, tuple[Any, Any]], dense_grads: Mapping[str, Any],
                  global_step: int, claim_limit: int, learning_rates: Mapping[str, Any] | None = None,
                  dedupe: bool = True, sole_claimer: bool = False) -> tuple[int, bool]:
        """A training step's updates as one ApplyGradients per shard, the step claimed on the way: add 1 to
        the global step unless that would pass `claim_limit` and, only if it did, apply the rows and dense
        gradients. (global step after the claim, whether the step was claimed and applied.)

        Shard 0 claims and applies its part in one call; the other shards' parts go out (in parallel) once
        the claim is granted, so a refused step changes nothing anywhere. `sole_claimer`: the caller is the
        only one claiming steps and never claims past `claim_limit` (a job's only worker), so the claim
        cannot be refused and every shard's part goes out at once; should shard 0 refuse it all the same,
        `PSError` says so. Everything is validated before anything is sent."""
        if int(claim_limit) <= 0:
            raise ValueError(f"push_step: claim_limit must be >= 1, got {claim_limit}")
        items = self._update_items("ApplyGradients", grads_by_table, dedupe, learning_rates)
        dense = self._dense_grads("push_step", dense_grads)
        scalars = self._numbered({APPLY_GLOBAL_STEP: int(global_step)})
        first = encode_updates(items.get(0, []), {**scalars, APPLY_CLAIM_LIMIT: int(claim_limit)}, dense.get(0, ()))
        rest = {s: encode_updates(items.get(s, []), scalars, dense.get(s, ()))
                for s in range(1, self.num_shards) if s in items or s in dense}
        if sole_claimer and rest:
            reply = self._call_shards("ApplyGradients", {0: first, **rest})[0]
            if not reply.claimed:
                raise PSError(f"shard 0 refused the claim of a step at global step {reply.global_step} (limit "
                              f"{claim_limit}) from a sole claimer: something else advanced the global step, and "
                              f"shards {sorted(rest)} applied that step's updates", 0, self.addresses[0])
            return int(reply.global_step), True
        reply = self._call_with_retries(0, "ApplyGradients", first)
        if not reply.claimed:
            return int(reply.global_step), False
        if rest:
            self._call_shards("ApplyGradients", rest)
        return int(reply.global_step), True

    def _assign(self, method: str, table: str, ids: Any, values: Any, update_time: int) -> None:
        scalars = {UPDATE_UPDATE_TIME: int(update_time)}
        requests = self._updates(method, {table: (ids, values)}, False,
                                 self._numbered(scalars) if method == "AssignAdd" else scalars)
        if requests:
            self._call_shards(method, requests)

    def assign(self, table: str, ids: Any, values: Any, update_time: int = 0) -> None:
        self._assign("Assign", table, ids, values, update_time)

    def assign_add(self, table: str, ids: Any, values: Any, update_time: int = 0) -> None:
        self._assign("AssignAdd", table, ids, values, update_time)

    def reinitialize(self, table: str, ids: Any, update_time: int = 0) -> None:
        """Reset rows to the initializer (creating them if absent), with fresh optimizer state."""
        self.table_meta(table)
        routed = route(_as_ids(ids, f"reinitialize {table!r}"), self.num_shards)
        requests = {}
        for s in range(self.num_shards):
            shard_ids = routed.shard_ids(s)
            if shard_ids.size:
                requests[s] = ps_pb2.ReinitializeRequest(update_time=int(update_time))
                requests[s].tables.add(table=table, ids=shard_ids.tobytes())
        if requests:
            self._call_shards("Reinitialize", requests)

    def evict(self, tables: Iterable[str] | None = None) -> dict[str, int]:
        """Remove expired rows on every shard; rows removed per table."""
        request = ps_pb2.EvictRequest(tables=list(tables or []))
        total: dict[str, int] = {}
        for resp in self._call_shards("Evict", {s: request for s in range(self.num_shards)}).values():
            for name, n in resp.removed.items():
                total[name] = total.get(name, 0) + int(n)
        return total

    # -- dense variables -------------------------------------------------------------------------
    def create_dense(self, variables: Mapping[str, Mapping[str, Any]]) -> dict[str, bool]:
        """{name: {"shape", "optimizer", "initial_value"}}; idempotent, the first creator's value wins."""
        if not isinstance(variables, Mapping) or not variables:
            raise ValueError("create_dense expects a non-empty {name: spec} dict")
        per_shard: dict[int, ps_pb2.DenseCreateRequest] = {}
        shapes = {}
        for name, spec in variables.items():
            where = f"dense variable {name!r}"
            if not isinstance(name, str) or not name:
                raise ValueError(f"dense variable names must be non-empty strings, got {name!r}")
            unknown = set(spec) - {"shape", "optimizer", "initial_value"}
            if unknown:
                raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
            shape = spec.get("shape")
            if (not isinstance(shape, list | tuple) or not shape
                    or not all(isinstance(d, int | np.integer) and d > 0 for d in shape)):
                raise ValueError(f"{where}: shape must be a non-empty list of positive ints, got {shape!r}")
            shape = tuple(int(d) for d in shape)
            msg = ps_pb2.DenseVariable(name=name, shape=shape)
            try:
                optimizer_to_proto(OptimizerConfig.of(spec.get("optimizer")), msg.optimizer)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{where}: {exc}") from None
            if spec.get("initial_value") is not None:
                initial = np.asarray(spec["initial_value"], dtype=np.float32)
                if initial.shape != shape:
                    raise ValueError(f"{where}: initial_value has shape {initial.shape}, expected {shape}")
                if not np.isfinite(initial).all():
                    raise ValueError(f"{where}: initial_value contains NaN/Inf")
                msg.initial_value = initial.tobytes()
            per_shard.setdefault(dense_owner(name, self.num_shards), ps_pb2.DenseCreateRequest()).variables.append(msg)
            shapes[name] = shape
        created: dict[str, bool] = {}
        for resp in self._call_shards("DenseCreate", per_shard).values():
            created.update(resp.created)
        self._dense_shapes.update(shapes)
        return created

    def dense_pull(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        if names is None:
            requests = {s: ps_pb2.DensePullRequest() for s in range(self.num_shards)}
        else:
            requests = {}
            for name in names:
                requests.setdefault(dense_owner(name, self.num_shards), ps_pb2.DensePullRequest()).names.append(name)
        out = {}
        for resp in self._call_shards("DensePull", requests).values():
            out.update(self._dense_values(resp.values, "DensePull"))
        return out

    def dense_push(self, grads: Mapping[str, Any], global_step: int = 0, learning_rate: float | None = None) -> None:
        """Apply each variable's optimizer on its shard with these gradients."""
        if learning_rate is not None and not (math.isfinite(learning_rate) and learning_rate >= 0):
            raise ValueError(f"dense_push: learning_rate must be a finite non-negative float, got {learning_rate}")
        per_shard: dict[int, ps_pb2.DensePushRequest] = {}
        for s, grads_of_shard in self._dense_grads("dense_push", grads).items():
            req = per_shard[s] = self._numbered(ps_pb2.DensePushRequest(global_step=int(global_step)))
            if learning_rate is not None:
                req.learning_rate = float(learning_rate)
            for name, g in grads_of_shard:
                req.grads.add(name=name, values=g.tobytes())
        if per_shard:
            self._call_shards("DensePush", per_shard)

    def _dense_grads(self, method: str, grads: Mapping[str, Any]) -> dict[int, list[tuple[str, np.ndarray]]]:
        """Checked float32 dense gradients (the variable's shape when known, finite) by owning shard."""
        out: dict[int, list[tuple[str, np.ndarray]]] = {}
        for name, grad in grads.items():
            g = np.ascontiguousarray(grad, dtype=np.float32)
            shape = self._dense_shapes.get(name)
            if shape is not None and g.shape != shape:
                raise ValueError(f"{method} {name!r}: gradient shape {g.shape}, variable shape {shape}")
            if g.size and not all_finite(g.reshape(1, -1)):
                raise ValueError(f"{method} {name!r}: gradient contains NaN/Inf")
            out.setdefault(dense_owner(name, self.num_shards), []).append((name, g))
        return out

    # -- global step and barriers (shard 0) ------------------------------------------------------
    def increment_global_step(self, n: int = 1) -> int:
        if int(n) < 0:
            raise ValueError(f"increment_global_step: n must be >= 0, got {n}")
        request = ps_pb2.GlobalStepRequest(increment=int(n))
        if n:
            request = self._numbered(request)
        return int(self._call_with_retries(0, "GlobalStep", request).global_step)

    def global_step(self) -> int:
        return self.increment_global_step(0)

    def claim_global_step(self, limit: int) -> tuple[int, bool]:
        """Add 1 to the global step unless that would pass `limit`: (global step, whether it was added)."""
        request = self._numbered(ps_pb2.GlobalStepRequest(increment=1, limit=int(limit)))
        reply = self._call_with_retries(0, "GlobalStep", request)
        return int(reply.global_step), bool(reply.applied)

    def barrier(self, name: str, participant: str | None, expected: int, note: bytes = b"") -> list[str]:
        """Arrive at barrier `name` as `participant` (None: only look); who has arrived so far."""
        return sorted(self.barrier_notes(name, participant, expected, note))

    def barrier_notes(self, name: str, participant: str | None, expected: int,
                      note: bytes = b"") -> dict[str, bytes]:
        """Arrive (optionally leaving `note`) or only look: {participant arrived so far: its note, or b""}."""
        if not name:
            raise ValueError("barrier name must be non-empty")
        request = ps_pb2.BarrierRequest(name=name, participant=participant or "", expected=int(expected),
                                        note=bytes(note))
        reply = self._call_with_retries(0, "Barrier", request)
        return {p: bytes(reply.notes.get(p, b"")) for p in reply.arrived}

    def wait_barrier(self, name: str, participant: str | None, participants: list[str], timeout_s: float,
                     poll_s: float = 0.2, note: bytes = b"") -> list[str]:
        """Arrive as `participant` (None: only wait) and block until every one of `participants` has arrived.

        The arrival (and `note`) is repeated on every poll (it is idempotent), so a restarted shard 0, whose
        barriers are in memory only, learns it again. After `timeout_s` raises `BarrierTimeout` naming who is
        missing. `wait_barrier_notes` returns the participants' notes instead."""
        return sorted(self.wait_barrier_notes(name, participant, participants, timeout_s, poll_s, note))

    def wait_barrier_notes(self, name: str, participant: str | None, participants: list[str], timeout_s: float,
                           poll_s: float = 0.2, note: bytes = b"") -> dict[str, bytes]:
        if participant and participant not in participants:
            raise ValueError(f"barrier {name!r}: {participant!r} is not one of its participants {participants}")
        deadline = time.monotonic() + timeout_s
        while True:
            arrived = self.barrier_notes(name, participant, len(participants), note)
            missing = [p for p in participants if p not in arrived]
            if not missing:
                return arrived
            if time.monotonic() >= deadline:
                raise BarrierTimeout(f"barrier {name!r}: {len(participants) - len(missing)} of {len(participants)} "
                                     f"arrived within {timeout_s:g}s; missing: {', '.join(missing)}", missing)
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))

    # -- checkpoints -----------------------------------------------------------------------------
    def _checkpoints(self, checkpoint_dir: str) -> CheckpointCoordinator:
        return CheckpointCoordinator(checkpoint_dir, self.num_shards, self.config.keep_checkpoints)

    def _save_parts(self, path: Path, step: int) -> None:
        request = ps_pb2.SaveRequest(checkpoint_path=str(path), step=step)
        self._call_shards("Save", {s: request for s in range(self.num_shards)})

    def _restore_parts(self, path: Path) -> None:
        request = ps_pb2.RestoreRequest(checkpoint_path=str(path))
        self._call_shards("Restore", {s: request for s in range(self.num_shards)})
        self._tables.clear()
        self._dense_shapes.clear()

    def save(self, checkpoint_dir: str, step: int, stream_offsets: StreamOffsets | None = None) -> str:
        """Coordinated checkpoint: every shard publishes its part, then the manifest (with the input's
        `stream_offsets`, if any) is written; keeps the last K."""
        return str(self._checkpoints(checkpoint_dir).save(step, self._save_parts, stream_offsets))

    def restore(self, checkpoint_dir: str, step: int | None = None) -> str:
        """Every shard loads the ids it owns from a complete checkpoint written by any number of shards."""
        return str(self._checkpoints(checkpoint_dir).restore(step, self._restore_parts))

    def latest_checkpoint(self, checkpoint_dir: str) -> str | None:
        path = self._checkpoints(checkpoint_dir).latest()
        return None if path is None else str(path)

    # -- introspection ---------------------------------------------------------------------------
    def health(self) -> list[dict[str, Any]]:
        """One dict per shard; a shard that does not answer shows serving=False and the error."""
        out = []
        for shard, stub in enumerate(self._stubs):
            entry: dict[str, Any] = {"shard": shard, "address": self.addresses[shard]}
            try:
                h = stub.Health(ps_pb2.HealthRequest(), timeout=min(self.config.timeout_s, 5.0))
                entry.update(shard_index=h.shard_index, num_shards=h.num_shards, serving=h.serving, pid=h.pid,
                             uptime_s=h.uptime_s, server_model=h.server_model, num_tables=h.num_tables,
                             num_dense=h.num_dense, restored_from=h.restored_from, global_step=h.global_step,
                             sync_version=h.sync_version, sync_time=h.sync_time, sync_versions=dict(h.sync_versions),
                             protocol_version=h.protocol_version)
            except grpc.RpcError as exc:
                entry.update(serving=False, error=f"{exc.code().name}: {exc.details()}")
            out.append(entry)
        return out

    def stats(self) -> dict[str, Any]:
        """Rows and bytes per table (summed over shards and per shard), process RSS and request counts."""
        responses = self._call_shards("Stats", {s: ps_pb2.StatsRequest() for s in range(self.num_shards)})
        shards: list[dict[str, Any]] = []
        tables: dict[str, dict[str, Any]] = {}
        for s in range(self.num_shards):
            r = responses[s]
            shards.append({
                "shard": s, "address": self.addresses[s], "rows": r.total_rows, "memory_bytes": r.total_memory_bytes,
                "rss_bytes": r.rss_bytes, "requests": dict(r.requests), "errors": dict(r.errors),
                "tables": {t.name: {"rows": t.rows, "memory_bytes": t.memory_bytes} for t in r.tables},
                "dense": sorted(t.name for t in r.dense),
            })
            for t in r.tables:
                entry = tables.setdefault(t.name, {"rows": 0, "memory_bytes": 0, "dim": t.dim,
                                                   "segment_dims": list(t.segment_dims),
                                                   "config": table_config_from_proto(t.config).to_dict()})
                entry["rows"] += t.rows
                entry["memory_bytes"] += t.memory_bytes
        return {"num_shards": self.num_shards, "tables": tables, "shards": shards,
                "total_rows": sum(s["rows"] for s in shards),
                "total_memory_bytes": sum(s["memory_bytes"] for s in shards)}
