"""The entry server's side of the dense sync: `monolith serve --dense-sync`.

The training shards holding dense variables send their current values every interval
(ps/service/dense_sync_sender.py) as `EntrySync/SyncDense` messages. Each message goes to the newest loaded
model version (the one answering requests that name none):

- It is checked whole first: every variable named as training names it (`dense_<i>`) must be in the export's
  dense layout (`entry.json` "dense", recorded by the exporter: the match is by name, not by order), with
  its shape, float32 values and finite. Anything wrong refuses the message (INVALID_ARGUMENT naming the
  variable; FAILED_PRECONDITION for an export without the layout) and nothing of it is applied.
- It is applied by swapping new variables into the signatures' captures (`Servable.assign_dense`): a Predict
  sees every value of one message old or every value new, without any lock on the predict path.
- Per training shard the version applied last is kept; a message not newer (a retry that lost the race) is
  answered `applied=false`. A model version loaded later gets the last applied values of every training
  shard before it takes traffic (`prime`), so a new export never serves older dense values than the sync did.

Prometheus: `dense_sync_version{model}` (newest version applied) and `dense_sync_lag_seconds{model}` (age of
the stalest training shard's last applied values, read at scrape time; absent before the first).
"""
from __future__ import annotations

import logging
import threading
import time
import weakref

import grpc
import numpy as np
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily

from protos import ps_pb2
from ps.errors import PSInvalidArgument
from serving.model_versions import ModelVersions
from serving.servable import Servable
from serving.sync_receiver import AppliedSync, SyncProgress

log = logging.getLogger(__name__)

ENTRY_SYNC_SERVICE = ps_pb2.DESCRIPTOR.services_by_name["EntrySync"].full_name


def decode_dense(request: ps_pb2.SyncDenseRequest) -> dict[str, np.ndarray]:
    """{training name: float32 value in its shape}; malformed parts are INVALID_ARGUMENT naming the variable."""
    out: dict[str, np.ndarray] = {}
    for var in request.variables:
        where = f"SyncDense variable {var.name!r}"
        if not var.name:
            raise PSInvalidArgument("SyncDense: a variable without a name")
        if var.name in out:
            raise PSInvalidArgument(f"{where} appears twice")
        shape = tuple(int(d) for d in var.shape)
        if any(d < 0 for d in shape):
            raise PSInvalidArgument(f"{where}: negative dimension in shape {list(shape)}")
        size = int(np.prod(shape, dtype=np.int64))
        if len(var.values) != 4 * size:
            raise PSInvalidArgument(f"{where}: {len(var.values)} bytes, shape {list(shape)} needs {4 * size} "
                                    f"(float32)")
        out[var.name] = np.frombuffer(var.values, dtype="<f4").reshape(shape)
    return out


class DenseSyncReceiver(SyncProgress):
    """Applies dense sync messages to the newest loaded version of one model."""

    def __init__(self, versions: ModelVersions) -> None:
        self.versions = versions
        self._order = threading.Lock()  # one message (or priming) at a time: version check and apply together
        self.applied: dict[int, AppliedSync] = {}
        self._last: dict[int, dict[str, np.ndarray]] = {}  # per training shard: its last applied values
        _RECEIVERS.add(self)

    def sync_dense(self, request: ps_pb2.SyncDenseRequest) -> ps_pb2.SyncDenseResponse:
        source = self.check_header("SyncDense", request)
        values = decode_dense(request)
        with self._order:
            servable: Servable = self.versions.get()
            held = self.applied.get(source)
            known = held.version if held else 0
            if request.version <= known:
                return ps_pb2.SyncDenseResponse(applied=False, known_version=known, model_version=servable.version)
            servable.assign_dense(servable.check_dense(values))
            if held is None:
                log.info("dense sync: first values of training shard %d applied to model %s version %d (%d "
                         "variables)", source, servable.name, servable.version, len(values))
            self.applied[source] = AppliedSync(request.version, request.snapshot_time, time.time())
            self._last[source] = values
        return ps_pb2.SyncDenseResponse(applied=True, known_version=request.version, model_version=servable.version)

    def prime(self, servable: Servable) -> Servable:
        """Give a version about to be published the last applied values of every training shard (a version
        that does not take them, e.g. another model, keeps its exported values, with a warning)."""
        with self._order:
            for source, values in self._last.items():
                try:
                    servable.assign_dense(servable.check_dense(values))
                except Exception as exc:
                    log.warning("model %s version %d keeps its exported dense values of training shard %d: %s",
                                servable.name, servable.version, source, exc)
        return servable

    def handlers(self, server) -> list[grpc.GenericRpcHandler]:
        """The `EntrySync` service, answered through the `PredictionServer`'s error handling and metrics."""
        return [server._service(ENTRY_SYNC_SERVICE, {"SyncDense": (ps_pb2.SyncDenseRequest, self.sync_dense)})]


_RECEIVERS: weakref.WeakSet[DenseSyncReceiver] = weakref.WeakSet()


class _DenseSyncCollector:
    def collect(self):
        lag = GaugeMetricFamily("dense_sync_lag_seconds", "age of the stalest training shard's last applied dense "
                                "values", labels=["model"])
        version = GaugeMetricFamily("dense_sync_version", "newest dense sync version applied", labels=["model"])
        now = time.time()
        for receiver in list(_RECEIVERS):
            model = receiver.versions.name
            if receiver.applied:
                lag.add_metric([model], max(0.0, now - receiver.stalest_time))
            version.add_metric([model], receiver.version)
        yield from (lag, version)


REGISTRY.register(_DenseSyncCollector())
